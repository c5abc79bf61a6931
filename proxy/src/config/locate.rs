//! Finds the line of a dotted key (`slots.green.addr`,
//! `scenario[1].step[0].path`) in TOML text, so every validation problem can
//! point at the line to fix.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// The 1-based line of `key`, or of its nearest enclosing table when the key
/// itself is missing (a required key left out), or `None` when neither is in
/// the text (a default that was never written).
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    let span = find(doc.get_ref(), key)?;
    Some(text[..span.start.min(text.len())].matches('\n').count() + 1)
}

/// The dotted key whose value holds byte `offset` of the text, in the
/// form `line_of` takes. Table spans cover only their headers, so this
/// searches every leaf rather than descending by span.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    leaf_at(doc.get_ref(), "", offset)
}

fn leaf_at(table: &DeTable<'_>, prefix: &str, offset: usize) -> Option<String> {
    let holds = |span: Range<usize>| span.contains(&offset) || span.start == offset;
    for (k, v) in table.iter() {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        let found =
            match v.get_ref() {
                DeValue::Table(t) => leaf_at(t, &key, offset),
                DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| match item
                    .get_ref()
                {
                    DeValue::Table(t) => leaf_at(t, &format!("{key}[{i}]"), offset),
                    _ => None,
                }),
                _ => None,
            };
        if found.is_some() {
            return found;
        }
        if holds(k.span()) || holds(v.span()) {
            return Some(key);
        }
    }
    None
}

fn find(root: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    let mut table = root;
    let mut found: Option<Range<usize>> = None;
    for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name) else {
            return found;
        };
        found = Some(k.span());
        let value = match (v.get_ref(), index) {
            (DeValue::Array(items), Some(i)) => match items.get(i) {
                Some(item) => {
                    found = Some(item.span());
                    item.get_ref()
                }
                None => return found,
            },
            (other, _) => other,
        };
        match value {
            DeValue::Table(t) => table = t,
            _ => return found,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::{key_at, line_of};

    #[test]
    fn finds_nested_keys_and_array_items() {
        let text = "a = 1\n[slots.green]\naddr = \"x\"\n\n[[scenario]]\nname = \"one\"\n[[scenario]]\nname = \"two\"\n[[scenario.step]]\npath = \"p\"\n";
        assert_eq!(line_of(text, "a"), Some(1));
        assert_eq!(line_of(text, "slots.green.addr"), Some(3));
        assert_eq!(line_of(text, "scenario[1].name"), Some(8));
        assert_eq!(line_of(text, "scenario[1].step[0].path"), Some(10));
        assert_eq!(line_of(text, "missing"), None);
        let offset = text.find("\"p\"").expect("value");
        assert_eq!(
            key_at(text, offset).as_deref(),
            Some("scenario[1].step[0].path")
        );
    }
}
