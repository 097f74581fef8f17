//! Showing a database URL without its secrets: the one function every place that prints, logs
//! or embeds a DSN in an error goes through.

/// What a redacted secret is replaced by.
const HIDDEN: &str = "***";

/// `url` with every password replaced by `***`: the one in the user info
/// (`postgres://user:secret@host/db` → `postgres://user:***@host/db`) and the value of every
/// query parameter whose name mentions a password (`?password=`, `?sslpassword=`, also
/// percent-encoded names). Anything else is kept, so the result still says which database is
/// meant.
///
/// It is deliberately conservative: the user info runs to the *last* `@` of the URL, so a
/// password holding an unencoded `@`, `/`, `?` or `#` is hidden whole (at worst, more than
/// the password is hidden, never less).
#[must_use]
pub fn redact_dsn(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // A plain path (SQLite) or `sqlite:PATH`: no user info, but a query may still hold one.
        return redact_query(url);
    };
    let rest = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, host_and_more) = (&rest[..at], &rest[at + 1..]);
            match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:{HIDDEN}@{host_and_more}"),
                None => rest.to_owned(),
            }
        }
        None => rest.to_owned(),
    };
    format!("{scheme}://{}", redact_query(&rest))
}

/// `text` (an error message, a config file's excerpt) with every URL in it passed through
/// [`redact_dsn`]: a URL is a run of characters other than whitespace, quotes and backticks
/// that holds `://`.
#[must_use]
pub fn redact_dsns_in(text: &str) -> String {
    let is_delimiter = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`');
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    for c in text.chars() {
        if is_delimiter(c) {
            out.push_str(&redact_token(&token));
            token.clear();
            out.push(c);
        } else {
            token.push(c);
        }
    }
    out.push_str(&redact_token(&token));
    out
}

fn redact_token(token: &str) -> String {
    if token.contains("://") { redact_dsn(token) } else { token.to_owned() }
}

/// The query parameters of `url` whose (percent-decoded, case-folded) name mentions a
/// password get their value replaced.
fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else { return url.to_owned() };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _value)) if is_secret_name(name) => format!("{name}={HIDDEN}"),
            _ => param.to_owned(),
        })
        .collect();
    let mut out = format!("{base}?{}", params.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// Whether a query parameter's name names a secret: it mentions `pass` (password,
/// sslpassword, passfile…) once percent-decoded and case-folded.
fn is_secret_name(name: &str) -> bool {
    percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .to_ascii_lowercase()
        .contains("pass")
}

#[cfg(test)]
mod tests {
    use super::{redact_dsn, redact_dsns_in};

    #[test]
    fn passwords_in_the_user_info_are_hidden() {
        assert_eq!(
            redact_dsn("postgres://kahn_app:s3cret@db.internal:5432/kahn"),
            "postgres://kahn_app:***@db.internal:5432/kahn"
        );
        assert_eq!(
            redact_dsn("postgresql://admin:p%40ss@127.0.0.1/kahn?sslmode=require"),
            "postgresql://admin:***@127.0.0.1/kahn?sslmode=require"
        );
        // Unencoded @ / ? # in a password: everything up to the last @ is hidden.
        let odd = redact_dsn("postgres://u:a@b/c?d#e@host/db");
        assert_eq!(odd, "postgres://u:***@host/db");
        // An empty password is still hidden (it says nothing, but it is shown as hidden).
        assert_eq!(redact_dsn("postgres://u:@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    fn passwords_in_the_query_are_hidden() {
        assert_eq!(
            redact_dsn("postgres://u@h/db?sslmode=disable&password=s3cret&application_name=k"),
            "postgres://u@h/db?sslmode=disable&password=***&application_name=k"
        );
        assert_eq!(
            redact_dsn("postgres://u:a@h/db?PassWord=b&sslpassword=c&pass%77ord=d#frag"),
            "postgres://u:***@h/db?PassWord=***&sslpassword=***&pass%77ord=***#frag"
        );
        assert_eq!(redact_dsn("sqlite:kahn.db?password=x"), "sqlite:kahn.db?password=***");
    }

    #[test]
    fn what_holds_no_secret_is_unchanged() {
        for url in [
            "sqlite://kahn.db",
            "sqlite:///var/lib/kahn/kahn.db",
            "sqlite::memory:",
            "kahn.db",
            "postgres://postgres@127.0.0.1:5432/kahn",
            "postgres://127.0.0.1/kahn?sslmode=require",
            "",
            "%",
            "postgres://h/db?%zz=1&=&&x",
        ] {
            assert_eq!(redact_dsn(url), url);
        }
    }

    #[test]
    fn urls_inside_a_message_are_redacted() {
        let message = "config kahn.toml is not valid: TOML parse error at line 1\n\
                       1 | db = postgres://kahn_app:s3cret@h/db\n  | expected a string\n\
                       also \"postgresql://a:b@c/d?password=e\" and `sqlite://x.db`";
        let shown = redact_dsns_in(message);
        assert!(!shown.contains("s3cret") && !shown.contains(":b@") && !shown.contains("=e"));
        assert!(shown.contains("db = postgres://kahn_app:***@h/db\n"), "{shown}");
        assert!(shown.contains("\"postgresql://a:***@c/d?password=***\""), "{shown}");
        assert!(shown.contains("`sqlite://x.db`"), "{shown}");
    }
}
