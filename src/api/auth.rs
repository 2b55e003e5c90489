//! API tokens: how one is made and checked (`tgc_` and 40 random characters; only its SHA-256
//! is stored), and the extractors that let a handler run only for a caller with the scope it
//! needs.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::Utc;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::ApiState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::problem::{ApiError, Problem};
use crate::store::tokens::{self, Scope};

const PREFIX: &str = "tgc_";
/// Random bytes per token: 240 bits, 40 characters of base64url.
const RANDOM_BYTES: usize = 30;
/// The characters after the prefix that find the token's row; the whole token is then
/// compared, by hash.
const LOOKUP_CHARS: usize = 8;

/// A token just made: shown once, then only its lookup part and hash are kept.
pub struct NewToken {
    pub token: String,
    pub lookup: String,
    pub hash: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
#[error("the system's random number generator failed: {0}")]
pub struct NoRandomness(getrandom::Error);

/// Fills `buf` from the operating system's generator (never a seeded one: these are secrets).
pub fn random(buf: &mut [u8]) -> Result<(), NoRandomness> {
    getrandom::fill(buf).map_err(NoRandomness)
}

pub fn new_token() -> Result<NewToken, NoRandomness> {
    let mut bytes = [0u8; RANDOM_BYTES];
    random(&mut bytes)?;
    let token = format!("{PREFIX}{}", B64.encode(bytes));
    let lookup = token[PREFIX.len()..PREFIX.len() + LOOKUP_CHARS].to_owned();
    let hash = hash(&token);
    Ok(NewToken {
        token,
        lookup,
        hash,
    })
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The lookup part of something that looks like a token, or `None`.
fn lookup_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    (rest.len() == RANDOM_BYTES * 4 / 3 && rest.is_char_boundary(LOOKUP_CHARS))
        .then(|| &rest[..LOOKUP_CHARS])
}

/// Whether `token` is the one whose hash is `stored`, in time that does not depend on where
/// they differ.
fn matches(token: &str, stored: &[u8]) -> bool {
    bool::from(hash(token).as_slice().ct_eq(stored))
}

/// A caller whose token is live: any scope.
pub struct Reader {
    pub name: String,
    pub scope: Scope,
}

/// A caller whose token has the write scope.
pub struct Writer {
    pub name: String,
}

/// The live token of the request, or 401.
async fn caller(parts: &Parts, state: &ApiState) -> Result<(String, Scope), ApiError> {
    let token = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized)?;
    let lookup = lookup_of(token).ok_or(ApiError::Unauthorized)?;
    let stored = tokens::find(&state.pool, lookup)
        .await?
        .filter(|stored| matches(token, &stored.hash))
        .ok_or(ApiError::Unauthorized)?;
    let stale = stored
        .last_used_at
        .is_none_or(|at| Utc::now() - at >= tokens::TOUCH_EVERY);
    if stale && let Err(e) = tokens::touch(&state.pool, stored.id).await {
        // Only the last-used time is lost: the request itself may go on.
        tracing::warn!(error = %e, token = %stored.name, "cannot note the token's use");
    }
    Ok((stored.name, stored.scope))
}

impl FromRequestParts<ApiState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let (name, scope) = caller(parts, state).await?;
        Ok(Reader { name, scope })
    }
}

impl FromRequestParts<ApiState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        match caller(parts, state).await? {
            (name, Scope::Write) => Ok(Writer { name }),
            (_, Scope::Read) => Err(ApiError::Forbidden),
        }
    }
}

/// The token a request was made with, as `GET /api/v1/token` shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Caller {
    pub name: String,
    pub scope: Scope,
}

#[utoipa::path(get, path = "/api/v1/token", tag = "meta",
    responses(
        (status = 200, body = Caller, description = "the token this request was made with"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn current(who: Reader) -> axum::Json<Caller> {
    axum::Json(Caller {
        name: who.name,
        scope: who.scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_is_found_by_its_lookup_and_matches_its_hash() {
        let made = new_token().unwrap();
        assert!(made.token.starts_with("tgc_") && made.token.len() == 44);
        assert_eq!(lookup_of(&made.token), Some(made.lookup.as_str()));
        assert!(matches(&made.token, &made.hash));
        let mut other = made.token.clone();
        other.pop();
        other.push(if made.token.ends_with('A') { 'B' } else { 'A' });
        assert!(!matches(&other, &made.hash));
        assert_ne!(new_token().unwrap().token, made.token);
    }

    #[test]
    fn what_is_not_a_token_has_no_lookup() {
        let good = new_token().unwrap().token;
        let cases = [
            "",
            "tgc_",
            "Bearer tgc_x",
            &good[..good.len() - 1],
            &good.replacen("tgc_", "tgx_", 1),
            "tgc_ééééééééééééééééééééééééééééééééééééééé",
        ];
        for case in cases {
            assert_eq!(lookup_of(case), None, "{case}");
        }
    }
}
