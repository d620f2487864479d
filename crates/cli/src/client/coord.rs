//! `muster leader NAME` and `muster cluster`: who leads an election, and
//! which servers make up the cluster.

use super::http::Api;
use super::table::Table;
use super::{decode, join_or_dash, json_out};
use anyhow::Result;
use serde::Deserialize;

/// `GET /api/v1/elections/{name}`; `holder` and `since` are absent while
/// nobody leads.
#[derive(Debug, Deserialize)]
struct Election {
    holder: Option<String>,
    term: u64,
    since: Option<String>,
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Deserialize)]
struct Cluster {
    mode: String,
    node: String,
    leader: String,
    #[serde(default)]
    members: Vec<String>,
}

pub async fn leader(api: &Api, name: &str, json: bool) -> Result<String> {
    let answer = api.get(&["elections", name], &[]).await?;
    if json {
        return Ok(json_out(&answer));
    }
    Ok(render_election(name, decode(answer)?))
}

fn render_election(name: &str, e: Election) -> String {
    let mut t = Table::new(&["NAME", "HOLDER", "TERM", "SINCE"]);
    // `-` keeps an empty cell visible (and `awk` columns aligned).
    t.row(vec![
        name.to_string(),
        e.holder.unwrap_or_else(|| "-".into()),
        e.term.to_string(),
        e.since.unwrap_or_else(|| "-".into()),
    ]);
    t.render()
}

pub async fn cluster(api: &Api, json: bool) -> Result<String> {
    let answer = api.get(&["cluster"], &[]).await?;
    if json {
        return Ok(json_out(&answer));
    }
    Ok(render_cluster(decode(answer)?))
}

fn render_cluster(c: Cluster) -> String {
    let mut t = Table::default();
    t.row(vec!["mode".into(), c.mode]);
    t.row(vec!["node".into(), c.node]);
    t.row(vec!["leader".into(), c.leader]);
    t.row(vec!["members".into(), join_or_dash(&c.members)]);
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn election_table_shows_a_dash_when_nobody_leads() {
        let held = json!({"holder": "node-a", "term": 3, "since": "2026-11-22T10:00:00Z"});
        assert_eq!(
            render_election("db", decode(held).unwrap()),
            "NAME  HOLDER  TERM  SINCE\n\
             db    node-a  3     2026-11-22T10:00:00Z\n"
        );
        assert_eq!(
            render_election("db", decode(json!({"term": 0})).unwrap()),
            "NAME  HOLDER  TERM  SINCE\n\
             db    -       0     -\n"
        );
    }

    #[test]
    fn cluster_lists_mode_node_leader_and_members() {
        let answer = json!({"mode": "standalone", "node": "h@127.0.0.1:8500",
                            "members": ["h@127.0.0.1:8500"], "leader": "h@127.0.0.1:8500"});
        assert_eq!(
            render_cluster(decode(answer).unwrap()),
            "mode     standalone\n\
             node     h@127.0.0.1:8500\n\
             leader   h@127.0.0.1:8500\n\
             members  h@127.0.0.1:8500\n"
        );
    }
}
