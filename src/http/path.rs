//! The path parameters of every route with an id or a key in its path ([`PathParam`]).

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// A route's path parameters, read like axum's `Path`, except that parameters that do not
/// decode (percent-encoded bytes that are not UTF-8, such as `/api/tasks/%FF`) read as the
/// empty value. Such an id names nothing, so the handler answers the 404 it gives any unknown
/// id, with its code; axum's own rejection is a plain-text 400 without one.
pub struct PathParam<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Default + Send,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let value = Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| value)
            .unwrap_or_default();
        Ok(Self(value))
    }
}
