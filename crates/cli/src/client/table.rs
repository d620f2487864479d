//! A plain-text table for people: columns padded to their widest cell, two
//! spaces apart, no borders, so output stays readable and easy to `grep`/`awk`.

/// Rows of cells; the first row, when made with [`Table::new`], is the header.
#[derive(Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Every line ends in `\n`; the last column is not padded so no line has
    /// trailing spaces.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        // Width in characters, not bytes, so a non-ASCII tag does not skew
        // the columns after it.
        let width = |c: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[i] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let mut t = Table::new(&["ID", "PORT", "TAGS"]);
        t.row(vec!["web-1".into(), "80".into(), "a,b".into()]);
        t.row(vec!["w".into(), "8080".into(), "-".into()]);
        t.row(vec!["é".into(), "1".into(), String::new()]);
        assert_eq!(
            t.render(),
            "ID     PORT  TAGS\nweb-1  80    a,b\nw      8080  -\né      1\n"
        );
    }

    #[test]
    fn an_empty_table_renders_nothing() {
        assert_eq!(Table::default().render(), "");
    }
}
