//! Sign-in sessions: held by this server, named by a signed cookie.
//!
//! A session id is 32 random bytes; the cookie carries it with an HMAC-SHA256 tag under a key
//! drawn at start, so a forged or altered cookie is refused before any lookup. The session
//! itself (the caller's claims and when it ends) lives here: logout removes it, and a cookie
//! copied before logout names nothing afterwards. Sessions end with the process (a restart
//! signs everyone out).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::Claims;

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "kahn_session";
/// The cookie binding a sign-in in progress to the browser that started it.
pub(crate) const LOGIN_COOKIE: &str = "kahn_login";
/// The most sessions held at once; past it the oldest ends first.
const MAX_SESSIONS: usize = 100_000;

type Tag = Hmac<Sha256>;

/// `n` random bytes, base64url.
pub(crate) fn random_token(n: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// `n` random bytes as lowercase hex (request ids, trace and span ids); without the OS's
/// randomness, the clock's nanoseconds (unique enough for an id in a log, never a secret).
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_le_bytes().iter().copied().cycle().take(n).collect();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a session cookie opened nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a cookie this server made, or a session that was ended (logout) or never existed.
    Unknown,
    /// The session's time is up.
    Expired,
}

impl Refused {
    pub(crate) fn message(&self) -> &'static str {
        match self {
            Self::Unknown => {
                "the session is not known (signed out, or the server restarted); sign in again"
            }
            Self::Expired => "the session expired; sign in again",
        }
    }
}

struct Session {
    claims: Claims,
    ends: Instant,
}

/// The sessions this server holds.
pub(crate) struct Sessions {
    key: [u8; 32],
    ttl: Duration,
    held: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Result<Self, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(Self { key, ttl, held: Mutex::new(HashMap::new()) })
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    fn tag(&self, id: &str) -> Tag {
        let mut mac = Tag::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session for `claims`; answers the cookie value naming it.
    pub(crate) fn open(&self, claims: Claims) -> Result<String, getrandom::Error> {
        let id = random_token(32)?;
        let tag = URL_SAFE_NO_PAD.encode(self.tag(&id).finalize().into_bytes());
        let now = Instant::now();
        let mut held = self.held();
        held.retain(|_, s| s.ends > now);
        if held.len() >= MAX_SESSIONS
            && let Some(oldest) = held.iter().min_by_key(|(_, s)| s.ends).map(|(k, _)| k.clone())
        {
            held.remove(&oldest);
        }
        held.insert(id.clone(), Session { claims, ends: now + self.ttl });
        Ok(format!("{id}.{tag}"))
    }

    /// The id a cookie value names, when its tag is this server's.
    fn id_of<'a>(&self, cookie: &'a str) -> Option<&'a str> {
        let (id, tag) = cookie.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.tag(id).verify_slice(&tag).ok()?;
        Some(id)
    }

    /// The claims of the session `cookie` names.
    pub(crate) fn claims(&self, cookie: &str) -> Result<Claims, Refused> {
        let id = self.id_of(cookie).ok_or(Refused::Unknown)?;
        let held = self.held();
        let session = held.get(id).ok_or(Refused::Unknown)?;
        // Kept until the next sign-in sweeps it, so asking again still says "expired".
        if session.ends <= Instant::now() {
            return Err(Refused::Expired);
        }
        Ok(session.claims.clone())
    }

    /// Ends the session `cookie` names, if any; answers whether one ended.
    pub(crate) fn end(&self, cookie: &str) -> bool {
        self.id_of(cookie).is_some_and(|id| self.held().remove(id).is_some())
    }
}

/// The value of cookie `name` in the request, when sent exactly once.
pub(crate) fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    let mut found = None;
    for value in parts.headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else { continue };
            if k == name {
                if found.is_some() {
                    // Two cookies of one name (a path or domain variant): trust neither.
                    return None;
                }
                found = Some(v);
            }
        }
    }
    found
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Lax`, `Secure` when `secure`; `max_age` `None`
/// removes the cookie.
pub(crate) fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: Option<Duration>,
    secure: bool,
) -> HeaderValue {
    let age = max_age.map_or(0, |d| d.as_secs());
    let secure = if secure { "; Secure" } else { "" };
    let text =
        format!("{name}={value}; Path={path}; Max-Age={age}; HttpOnly; SameSite=Lax{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("kahn_invalid=1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            iss: None,
            email: None,
            name: None,
            role: None,
            nonce: None,
            org_id: None,
        }
    }

    #[test]
    fn a_session_opens_ends_and_refuses_forged_cookies() -> Result<(), getrandom::Error> {
        let sessions = Sessions::new(Duration::from_secs(60))?;
        let cookie = sessions.open(claims())?;
        assert_eq!(sessions.claims(&cookie).map(|c| c.sub), Ok("alice".into()));
        let (id, _) = cookie.split_once('.').unwrap_or_default();
        assert_eq!(sessions.claims(&format!("{id}.AAAA")).map(|c| c.sub), Err(Refused::Unknown));
        assert_eq!(sessions.claims(id).map(|c| c.sub), Err(Refused::Unknown));
        let other = Sessions::new(Duration::from_secs(60))?;
        assert_eq!(other.claims(&cookie).map(|c| c.sub), Err(Refused::Unknown));
        assert!(sessions.end(&cookie));
        assert_eq!(sessions.claims(&cookie).map(|c| c.sub), Err(Refused::Unknown));
        assert!(!sessions.end(&cookie));
        Ok(())
    }

    #[test]
    fn a_session_expires() -> Result<(), getrandom::Error> {
        let sessions = Sessions::new(Duration::ZERO)?;
        let cookie = sessions.open(claims())?;
        assert_eq!(sessions.claims(&cookie).map(|c| c.sub), Err(Refused::Expired));
        assert_eq!(sessions.claims(&cookie).map(|c| c.sub), Err(Refused::Expired), "still");
        Ok(())
    }
}
