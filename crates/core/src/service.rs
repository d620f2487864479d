//! Service definitions.

use crate::Timestamp;
use crate::error::{Errors, ValidationError};
use crate::name::{validate_meta_entry, validate_tag};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `PUT /api/v1/services/{name}` body.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceBody {
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Free-form JSON the owner wants stored: resource requirements, image digests...
    #[serde(default)]
    pub spec: serde_json::Value,
}

/// A stored service definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceRecord {
    pub name: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub spec: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

pub const MAX_TAGS: usize = 64;
pub const MAX_META: usize = 64;

impl ServiceBody {
    /// Validates the body into the record it defines; `created_at` is kept from
    /// an earlier definition when there is one.
    pub fn into_record(
        self,
        name: &str,
        now: Timestamp,
        created_at: Option<Timestamp>,
    ) -> Result<ServiceRecord, ValidationError> {
        let mut errs = Errors::default();
        validate_tags_meta(&self.tags, &self.meta, &mut errs);
        errs.finish()?;
        Ok(ServiceRecord {
            name: name.to_string(),
            tags: self.tags,
            meta: self.meta,
            spec: self.spec,
            created_at: created_at.unwrap_or(now),
            updated_at: now,
        })
    }
}

pub(crate) fn validate_tags_meta(
    tags: &[String],
    meta: &BTreeMap<String, String>,
    errs: &mut Errors,
) {
    if tags.len() > MAX_TAGS {
        errs.push("tags", format!("at most {MAX_TAGS} tags"));
    }
    for (i, t) in tags.iter().enumerate() {
        if let Err(m) = validate_tag(t) {
            errs.push(format!("tags[{i}]"), m);
        }
    }
    if meta.len() > MAX_META {
        errs.push("meta", format!("at most {MAX_META} meta entries"));
    }
    for (k, v) in meta {
        if let Err(m) = validate_meta_entry(k, v) {
            errs.push(format!("meta.{k}"), m);
        }
    }
}
