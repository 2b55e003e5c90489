//! `GET /api/v1/repositories`: the repositories that have webhooks, where the console starts.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Reader;
use super::cursor::{self, Cursor};
use super::problem::{ApiError, Problem};
use super::webhooks::PageQuery;
use super::{ApiState, QueryOf, page_limit, page_start};
use crate::store::admin::{self, RepositoryRow};

/// A page of repositories, in name order (namespace, then repository): the order people look
/// one up in, and stable under inserts like every cursor.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RepositoryPage {
    pub data: Vec<RepositoryRow>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/repositories", tag = "webhooks",
    params(PageQuery),
    responses(
        (status = 200, body = RepositoryPage, description = "repositories with at least one webhook"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<ApiState>,
    _who: Reader,
    QueryOf(query): QueryOf<PageQuery>,
) -> Result<axum::Json<RepositoryPage>, ApiError> {
    let limit = page_limit(query.limit)?;
    let after = page_start(query.cursor.as_deref(), |c| match c {
        Cursor::Repository(namespace, repository) => Some((namespace, repository)),
        _ => None,
    })?;
    let after = after.as_ref().map(|(n, r)| (n.as_str(), r.as_str()));
    let mut rows = admin::list_repositories(&state.pool, after, limit + 1).await?;
    let next_cursor = cursor::cut(&mut rows, limit, |r| {
        Cursor::Repository(r.namespace.clone(), r.repository.clone())
    });
    Ok(axum::Json(RepositoryPage {
        data: rows,
        next_cursor,
    }))
}
