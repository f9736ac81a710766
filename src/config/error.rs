//! Config errors and where they are in the file. Syntax and type errors carry toml's own
//! byte span; semantic problems carry a TOML path (`routes[1].upstream`) that is looked
//! up in a span-keeping re-parse (`toml_edit::ImDocument`). Both end as
//! `FILE:LINE:COL: message`, line and column 1-based, column counted in characters.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml_edit::{ImDocument, Item, Table, TableLike, Value};

/// One thing wrong with a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file as the caller named it (`<embedded>` for the built-in default).
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Starts with the TOML path of the offending key when there is one.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config file: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, in file order; one per line when displayed.
    #[error("{}", lines(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The located problems (empty for `Io`).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid(problems) => problems,
        }
    }
}

fn lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// A TOML path such as `upstreams.yolo.endpoints[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

impl Path {
    pub fn key(&self, key: &str) -> Path {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Path(segs)
    }

    pub fn idx(&self, index: usize) -> Path {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Path(segs)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut off = offset.min(text.len());
    while !text.is_char_boundary(off) {
        off -= 1;
    }
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A syntax or type error from toml, located by its span and, when the file is
/// syntactically valid, prefixed with the path of the key it is about.
pub fn from_toml(text: &str, origin: &str, err: &toml::de::Error) -> Problem {
    let offset = err.span().map_or(0, |s| s.start);
    let (line, column) = line_col(text, offset);
    let message = reword(&err.message().trim().replace('\n', "; "));
    let path = match ImDocument::parse(text) {
        Ok(doc) => err
            .span()
            .and_then(|s| path_at(doc.as_table(), s.start))
            .filter(|p| !p.0.is_empty())
            .map(|p| p.to_string()),
        // Not even syntactically valid (an integer past i64 is a syntax error): the
        // key is read off the line, the table off the nearest header above it.
        Err(_) => err.span().and_then(|s| key_on_line(text, s.start)),
    };
    let message = match path {
        Some(p) => format!("{p}: {message}"),
        None => message,
    };
    Problem {
        file: origin.to_owned(),
        line,
        column,
        message,
    }
}

/// The dotted path of the `key = value` whose value holds `offset`, from the text
/// alone: the key left of the `=` on that line under the last `[table]` or
/// `[[array]]` header above it (an array table's index counted from its headers).
/// None when the line is no plain assignment or `offset` is not in its value.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[start..];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let eq = line.find('=')?;
    let bare = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | ' '))
    };
    let key = line[..eq].trim();
    if start + eq >= offset || !bare(key) || key.starts_with('[') {
        return None;
    }
    let key: String = key
        .split('.')
        .map(|k| k.trim().trim_matches('"'))
        .collect::<Vec<_>>()
        .join(".");
    let mut table: Option<String> = None;
    let above = &text[..start];
    for l in above.lines().rev() {
        let l = l.trim();
        if let Some(name) = l
            .strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .map(|(n, _)| n.trim())
        {
            let header = format!("[[{name}]]");
            let index = above
                .lines()
                .filter(|x| x.trim().starts_with(&header))
                .count()
                .saturating_sub(1);
            table = Some(format!("{name}[{index}]"));
            break;
        }
        if let Some(name) = l
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(n, _)| n.trim())
        {
            table = Some(name.to_owned());
            break;
        }
    }
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key,
    })
}

/// serde's names for what was expected, in the file's words (`i64` -> an integer,
/// `struct ListenerFile` -> a table).
fn reword(message: &str) -> String {
    let mut out = message
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table")
        .replace(
            "number too large to fit in target type",
            "integer too large (a TOML integer is at most 9223372036854775807)",
        )
        .replace(
            "number too small to fit in target type",
            "integer too small (a TOML integer is at least -9223372036854775808)",
        );
    while let Some(at) = out.find("expected struct ") {
        let name_start = at + "expected struct ".len();
        let name_end = out[name_start..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(out.len(), |n| name_start + n);
        out.replace_range(at..name_end, "expected a table");
    }
    out
}

/// Semantic problems, each located by looking its path up in the file; sorted in file
/// order. A path whose key is absent points at the nearest enclosing table or key.
pub fn locate_all(text: &str, origin: &str, problems: Vec<(Path, String)>) -> Vec<Problem> {
    let locator = Locator::new(text);
    let mut out: Vec<Problem> = problems
        .into_iter()
        .map(|(path, message)| {
            let (line, column) = locator.line_col(&path);
            let message = if path.0.is_empty() {
                message
            } else {
                format!("{path}: {message}")
            };
            Problem {
                file: origin.to_owned(),
                line,
                column,
                message,
            }
        })
        .collect();
    out.sort_by_key(|p| (p.line, p.column));
    out
}

/// Finds where TOML paths are in one text (parsed once for many look-ups).
pub struct Locator<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// Line and column of `path`'s value (or of its nearest enclosing table or key).
    pub fn line_col(&self, path: &Path) -> (usize, usize) {
        let offset = self
            .doc
            .as_ref()
            .and_then(|d| span_of(d.as_table(), path))
            .map_or(0, |s| s.start);
        line_col(self.text, offset)
    }
}

/// A position in the document while walking a path.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(i) => i.span(),
            Node::Table(t) => t.span(),
            Node::Value(v) => v.span(),
        }
    }

    fn table_like(self) -> Option<&'a dyn TableLike> {
        match self {
            Node::Item(i) => i.as_table_like(),
            Node::Table(t) => Some(t),
            Node::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }

    fn len(self) -> usize {
        match self {
            Node::Item(Item::ArrayOfTables(a)) => a.len(),
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => a.len(),
            _ => 0,
        }
    }

    fn index(self, i: usize) -> Option<Node<'a>> {
        match self {
            Node::Item(Item::ArrayOfTables(a)) => a.get(i).map(Node::Table),
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                a.get(i).map(Node::Value)
            }
            _ => None,
        }
    }

    /// Child by key, with the best span for it (the value's, else the key's).
    fn child(self, key: &str) -> Option<(Node<'a>, Option<Range<usize>>)> {
        let (k, item) = self.table_like()?.get_key_value(key)?;
        Some((Node::Item(item), item.span().or_else(|| k.span())))
    }
}

fn span_of(root: &Table, path: &Path) -> Option<Range<usize>> {
    let mut node = Node::Table(root);
    let mut best = None;
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => node.child(k),
            Seg::Index(i) => node.index(*i).map(|n| (n, n.span())),
        };
        let Some((child, span)) = next else { break };
        node = child;
        best = span.or(best);
    }
    best
}

/// The path of the deepest key whose key or value contains `offset`.
fn path_at(root: &Table, offset: usize) -> Option<Path> {
    let mut path = Path::default();
    find(Node::Table(root), offset, &mut path).then_some(path)
}

fn find(node: Node<'_>, offset: usize, path: &mut Path) -> bool {
    let contains = |s: Option<Range<usize>>| s.is_some_and(|s| s.contains(&offset));
    if let Some(table) = node.table_like() {
        for (key, _) in table.iter() {
            let Some((k, item)) = table.get_key_value(key) else {
                continue;
            };
            path.0.push(Seg::Key(key.to_owned()));
            if find(Node::Item(item), offset, path) || contains(k.span()) || contains(item.span()) {
                return true;
            }
            path.0.pop();
        }
    }
    for i in 0..node.len() {
        let Some(child) = node.index(i) else { continue };
        path.0.push(Seg::Index(i));
        if find(child, offset, path) || contains(child.span()) {
            return true;
        }
        path.0.pop();
    }
    false
}
