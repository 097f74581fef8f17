//! The server's logging: one line per event in both formats, whatever the events carry.
//!
//! Field values come from callers (a JWT's `sub`, a header, a driver's error text), so none is
//! printed raw: the human format escapes control characters (newlines, ANSI escapes), Unicode
//! line separators and bidirectional overrides in every value and message, and quotes any
//! value holding a space, `=` or a quote, so a value can forge neither a line nor a field. The
//! JSON format escapes through serde_json. Audit events ([`kahn_http::AUDIT_TARGET`]) are
//! always on, whatever `KAHN_LOG` says.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::layer::{Layer as _, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::serve::LogFormat;

/// Installs the global subscriber: `KAHN_LOG` (an `EnvFilter`; `info` when unset or invalid)
/// or the audit target, written to stderr in `format`.
pub(crate) fn init(format: LogFormat) {
    let env = EnvFilter::try_from_env("KAHN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = env.or(Targets::new().with_target(kahn_http::AUDIT_TARGET, LevelFilter::TRACE));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry();
    // A second initialisation (tests embedding this) is harmless: keep the first.
    let _ = match format {
        LogFormat::Json => registry.with(layer.json().with_filter(filter)).try_init(),
        LogFormat::Pretty => {
            registry.with(layer.fmt_fields(EscapedFields).with_filter(filter)).try_init()
        }
    };
}

/// `key=value` fields like tracing-subscriber's default, escaped: see the module docs.
#[derive(Debug, Default)]
pub(crate) struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor { writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'a> {
    writer: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    fn field(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if std::mem::take(&mut self.first) { "" } else { " " };
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{}", Escaped { text: value, quoted: false })
        } else {
            let quoted = needs_quotes(value);
            write!(self.writer, "{separator}{}={}", field.name(), Escaped { text: value, quoted })
        };
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here too, as their Display text.
        self.field(field, &format!("{value:?}"));
    }
}

/// Characters never printed raw: controls (C0, DEL, C1: newlines, carriage returns, ANSI
/// escapes), Unicode line and paragraph separators, bidirectional controls, the BOM.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

fn needs_quotes(value: &str) -> bool {
    value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '=' | '\\') || unsafe_char(c))
}

/// A value written escaped: unsafe characters as `\n`, `\r`, `\t` or `\u{…}`; when quoted,
/// in double quotes with `"` and `\` escaped too.
struct Escaped<'a> {
    text: &'a str,
    quoted: bool,
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.quoted {
            f.write_char('"')?;
        }
        for c in self.text.chars() {
            match c {
                '"' | '\\' if self.quoted => write!(f, "\\{c}")?,
                c if unsafe_char(c) => write!(f, "{}", c.escape_default())?,
                c => f.write_char(c)?,
            }
        }
        if self.quoted {
            f.write_char('"')?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Formats the events `emit` makes with [`EscapedFields`] into text.
    fn formatted(emit: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields)
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn values_and_messages_cannot_forge_lines_or_fields() {
        let forged = "admin\n2026-01-01T00:00:00Z  INFO kahn::audit: forged sub=root";
        let text = formatted(|| {
            tracing::info!(
                display = %forged,
                debug = ?forged,
                plain = forged,
                spaced = %"a b=c",
                bidi = %"x\u{202e}y\u{2028}z\x1b[31m",
                simple = %"kahn-admin",
                empty = "",
                "message with\r\na break: {}", forged
            );
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(
                r#"display="admin\n2026-01-01T00:00:00Z  INFO kahn::audit: forged sub=root""#
            ),
            "{text}"
        );
        assert!(text.contains(r#"plain="admin\n2026"#), "{text}");
        assert!(text.contains(r#"debug="\"admin\\n2026"#), "{text}");
        assert!(text.contains(r#"spaced="a b=c""#), "{text}");
        assert!(text.contains(r#"bidi="x\u{202e}y\u{2028}z\u{1b}[31m""#), "{text}");
        assert!(text.contains(" simple=kahn-admin"), "{text}");
        assert!(text.contains(r#"empty="""#), "{text}");
        assert!(text.contains(r"message with\r\na break: admin\n2026"), "{text}");
    }
}
