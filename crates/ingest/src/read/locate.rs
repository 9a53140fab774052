//! Where a data row is in a text file: CSV/TSV records walked the way polars splits them (quoted
//! line breaks included), JSON Lines rows as polars counts them (blank lines skipped).

/// Where a row is in its text file: 1-based physical lines, the header being line 1 of a CSV.
pub(crate) fn lines_note(first: usize, quoted_breaks: usize) -> String {
    if quoted_breaks == 0 {
        format!("line {first} of the file, counting from 1")
    } else {
        format!(
            "lines {first}-{} of the file, counting from 1",
            first + quoted_breaks
        )
    }
}

/// One record of a delimited file.
pub(crate) struct CsvRecord {
    /// Byte offset of its first byte.
    pub(crate) start: usize,
    /// Byte offset of the line break that ends it (or the file's length).
    pub(crate) end: usize,
    /// 1-based line of the file it starts on.
    pub(crate) line: usize,
    /// Line breaks inside quoted fields.
    pub(crate) quoted_breaks: usize,
    pub(crate) fields: usize,
}

impl CsvRecord {
    pub(crate) fn is_blank(&self, bytes: &[u8]) -> bool {
        matches!(&bytes[self.start..self.end], b"" | b"\r")
    }

    pub(crate) fn field_starts(&self, bytes: &[u8], sep: u8) -> Vec<usize> {
        let mut starts = Vec::with_capacity(self.fields);
        walk_csv_record(bytes, self.start, sep, |s| starts.push(s));
        starts
    }

    /// The fields as text, quotes removed (for naming header columns).
    pub(crate) fn field_names(&self, bytes: &[u8], sep: u8) -> Vec<String> {
        let starts = self.field_starts(bytes, sep);
        (0..starts.len())
            .map(|i| {
                let end = starts.get(i + 1).map_or(self.end, |&next| next - 1);
                let raw = String::from_utf8_lossy(&bytes[starts[i]..end]);
                let raw = raw.strip_suffix('\r').unwrap_or(&raw);
                match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                    Some(inner) => inner.replace("\"\"", "\""),
                    None => raw.to_string(),
                }
            })
            .collect()
    }
}

/// Walks the record that starts at `pos` the way polars splits it: a field that starts with `"`
/// runs until a separator or line break outside quotes (every `"` toggles quoting, so `""` is a
/// quote inside the field); any other field ends at the next separator or line break. Calls
/// `on_field` with the offset of each field. Returns (fields, offset of the ending line break or
/// the file's length, line breaks inside quotes).
fn walk_csv_record(
    bytes: &[u8],
    mut pos: usize,
    sep: u8,
    mut on_field: impl FnMut(usize),
) -> (usize, usize, usize) {
    let (mut fields, mut breaks) = (0, 0);
    loop {
        on_field(pos);
        fields += 1;
        if bytes.get(pos) == Some(&b'"') {
            let mut quoted = false;
            while let Some(&c) = bytes.get(pos) {
                if c == b'"' {
                    quoted = !quoted;
                } else if c == b'\n' && quoted {
                    breaks += 1;
                } else if !quoted && (c == sep || c == b'\n') {
                    break;
                }
                pos += 1;
            }
        } else {
            while bytes.get(pos).is_some_and(|&c| c != sep && c != b'\n') {
                pos += 1;
            }
        }
        match bytes.get(pos) {
            Some(&c) if c == sep => pos += 1,
            Some(_) => return (fields, pos, breaks),
            None => return (fields, bytes.len(), breaks),
        }
    }
}

/// The records of a delimited file, header first.
pub(crate) struct CsvRecords<'a> {
    bytes: &'a [u8],
    sep: u8,
    pos: usize,
    line: usize,
}

impl<'a> CsvRecords<'a> {
    pub(crate) fn new(bytes: &'a [u8], sep: u8) -> Self {
        CsvRecords {
            bytes,
            sep,
            pos: 0,
            line: 1,
        }
    }
}

impl Iterator for CsvRecords<'_> {
    type Item = CsvRecord;

    fn next(&mut self) -> Option<CsvRecord> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let (fields, end, quoted_breaks) = walk_csv_record(self.bytes, self.pos, self.sep, |_| {});
        let record = CsvRecord {
            start: self.pos,
            end,
            line: self.line,
            quoted_breaks,
            fields,
        };
        self.pos = end + 1;
        self.line += quoted_breaks + 1;
        Some(record)
    }
}

/// The lines polars reads as JSON Lines rows (it skips blank ones), with their 1-based numbers.
pub(crate) fn json_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| l.iter().any(|b| !matches!(b, b' ' | b'\t' | b'\r')))
        .map(|(i, l)| (i + 1, l))
}
