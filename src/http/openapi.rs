//! The OpenAPI 3.1 document, generated from the code with utoipa: every resource module
//! registers its routes through `utoipa_axum`'s `routes!`, so the path a handler is
//! mounted at and the path it is documented at are the same attribute, and the schemas
//! are derived from the types the handlers answer with. This module adds what is not a
//! handler: the title, tags, the bearer key, the webhook darkroom sends, and the
//! WebSocket's message type.
//!
//! Served at `/api/openapi.json`, with Swagger UI at `/api/docs` (vendored into the
//! binary at build time: nothing is fetched from another host, at build or at run time).
//! A committed copy, `docs/openapi.json`, is compared with the served one by a test
//! (`UPDATE_OPENAPI=1 cargo test --test it openapi::` rewrites it).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref};
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::auth::is_public_path;
use super::error::ApiError;
use crate::AppState;
use crate::domain::ErrorCode;
use crate::domain::request::Model;

/// Where the document and the docs page are served.
pub const DOCUMENT_PATH: &str = "/api/openapi.json";
pub const DOCS_PATH: &str = "/api/docs";
/// Swagger UI sets inline styles and shows data: images; nothing else is let in.
const DOCS_CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "darkroom",
        description = "Asynchronous image-generation gateway: queue, provider callbacks, results \
            into your own bucket. Errors are `{success: false, error, code}` with a stable \
            `code`. With API keys on, send `Authorization: Bearer <key>` (streams also take \
            `?access_token=`); each key sees only its own tasks, batches and files.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    paths(super::files::serve_file),
    components(schemas(super::live::ClientMessage, crate::webhooks::WebhookPayload)),
    tags(
        (name = "generation", description = "The original service's endpoints: upload, generate, poll"),
        (name = "tasks", description = "Tasks: list, detail, cancel, retry"),
        (name = "batches", description = "Batches: create, follow, cancel, retry, download"),
        (name = "live", description = "Progress as it happens: SSE, WebSocket, long-poll"),
        (name = "files", description = "Objects in the bucket"),
        (name = "webhooks", description = "The calling key's webhook signing secret"),
        (name = "provider callbacks", description = "Called by the provider, not by clients"),
        (name = "operations", description = "Health, readiness, instance information"),
        (name = "statistics", description = "What the tasks of a window did, from the database"),
    ),
)]
struct ApiDoc;

/// The parts of the document no handler describes; the routers add their paths to it.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Adds what depends on configuration or is no handler's to the document the routers
/// built: the models `model` accepts here, the bearer key and the outbound webhook.
pub fn finish(
    mut document: utoipa::openapi::OpenApi,
    gemini_model: &str,
) -> utoipa::openapi::OpenApi {
    list_models(&mut document, gemini_model);
    list_error_codes(&mut document);
    require_a_source(&mut document);
    document_key_refusals(&mut document);
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "apiKey",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key (DARKROOM_API_KEYS or `darkroom keys create`), when keys are on",
                ))
                .build(),
        ),
    );
    // Keys are optional (off by default): either no credentials or a bearer key.
    document.security = Some(vec![
        SecurityRequirement::default(),
        SecurityRequirement::new("apiKey", Vec::<String>::new()),
    ]);
    let delivery = OperationBuilder::new()
        .summary(Some("A task of a request with `webhookUrl` is final"))
        .description(Some(
            "Signed per Standard Webhooks: `webhook-id` (the same on every attempt), \
             `webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64 \
             HMAC-SHA256 of \"{id}.{timestamp}.{body}\">`, keyed with the task's API key's \
             secret (`GET /api/webhook-secret`; the instance secret when keys are off); \
             after a rotation, two signatures for 24 hours. Any 2xx acknowledges; anything \
             else is retried with backoff for about a day.",
        ))
        .request_body(Some(
            RequestBodyBuilder::new()
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("WebhookPayload")))
                        .build(),
                )
                .required(Some(utoipa::openapi::Required::True))
                .build(),
        ))
        .response(
            "200",
            ResponseBuilder::new().description("Acknowledged (any 2xx)"),
        )
        .build();
    document.webhooks = Some(
        PathsBuilder::new()
            .path("taskFinished", PathItem::new(HttpMethod::Post, delivery))
            .build(),
    );
    document
}

/// `model` accepts KIE's model names and the Gemini model this instance is set up with
/// (`GEMINI_MODEL`), so the list is filled in from the configuration.
fn list_models(document: &mut utoipa::openapi::OpenApi, gemini_model: &str) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;
    let body = document
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("GenerateBody"));
    let Some(RefOr::T(Schema::Object(body))) = body else {
        return;
    };
    let Some(RefOr::T(Schema::Object(model))) = body.properties.get_mut("model") else {
        return;
    };
    let mut names: Vec<serde_json::Value> = Model::ACCEPTED_NAMES
        .iter()
        .copied()
        .chain([gemini_model])
        .map(serde_json::Value::from)
        .collect();
    names.push(serde_json::Value::Null);
    model.enum_values = Some(names);
}

/// Every `code` an error answer (or a refused file of an upload) can carry: the catalogue,
/// as an enum, with each code's status and meaning in the description.
fn list_error_codes(document: &mut utoipa::openapi::OpenApi) {
    use crate::domain::ErrorCode;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;
    let Some(schemas) = document.components.as_mut().map(|c| &mut c.schemas) else {
        return;
    };
    let codes: Vec<serde_json::Value> = ErrorCode::ALL
        .iter()
        .map(|c| serde_json::Value::from(c.as_str()))
        .collect();
    let table: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|c| format!("- `{}` ({}): {}", c.as_str(), c.status(), c.meaning()))
        .collect();
    for (schema, nullable) in [
        ("ErrorBody", false),
        ("FileError", false),
        ("UploadAnswer", true),
    ] {
        let Some(RefOr::T(Schema::Object(object))) = schemas.get_mut(schema) else {
            continue;
        };
        let Some(RefOr::T(Schema::Object(code))) = object.properties.get_mut("code") else {
            continue;
        };
        let mut values = codes.clone();
        if nullable {
            values.push(serde_json::Value::Null);
        }
        code.enum_values = Some(values);
        code.description = Some(format!(
            "A stable code from the catalogue (HTTP status of a whole answer in brackets):\n{}",
            table.join("\n")
        ));
    }
}

/// A generation request needs at least one source image, in `uploads` or `imageUrls`:
/// a rule across two fields, which the derived schema cannot say by itself.
fn require_a_source(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder};
    let Some(schemas) = document.components.as_mut().map(|c| &mut c.schemas) else {
        return;
    };
    let Some(RefOr::T(body)) = schemas.remove("GenerateBody") else {
        return;
    };
    let non_empty = |field: &str| {
        ObjectBuilder::new()
            .property(field, ArrayBuilder::new().min_items(Some(1)))
            .required(field)
    };
    let one_source = AnyOfBuilder::new()
        .item(non_empty("uploads"))
        .item(non_empty("imageUrls"))
        .description(Some("At least one source image, in uploads or imageUrls"));
    schemas.insert(
        "GenerateBody".to_owned(),
        AllOfBuilder::new().item(body).item(one_source).into(),
    );
}

/// The answers the authentication middleware gives before any handler runs, on every
/// route that needs a key (the same test as the middleware's, [`is_public_path`]): 401
/// for a missing or wrong key and 429 past the key's rate limit. The callback routes have
/// their own rate limit. And the 503 of every POST when storage refuses writes.
fn document_key_refusals(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::response::Response;
    let error = |description: &str| -> RefOr<Response> {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
            .into()
    };
    for (path, item) in document.paths.paths.iter_mut() {
        let keyed = !is_public_path(path);
        let callback = path.starts_with("/api/callback");
        for write in [&mut item.post, &mut item.delete].into_iter().flatten() {
            // Every POST and DELETE writes: a store that refuses writes answers 503 with its code.
            write
                .responses
                .responses
                .entry("503".to_owned())
                .or_insert_with(|| {
                    error("The database or the bucket refuses writes (`storage_full`, `storage_read_only`, `storage_unavailable`); nothing was stored")
                });
        }
        for operation in [&mut item.get, &mut item.post, &mut item.delete]
            .into_iter()
            .flatten()
        {
            let responses = &mut operation.responses.responses;
            if keyed {
                responses.entry("401".to_owned()).or_insert_with(|| {
                    error("API keys are on and the key is missing or wrong (`api_key_required`, `invalid_api_key`)")
                });
            }
            if keyed || callback {
                responses.entry("429".to_owned()).or_insert_with(|| {
                    error("Too many requests (`rate_limited`; see Retry-After)")
                });
            }
        }
    }
}

/// `/api/openapi.json` and the Swagger UI page at `/api/docs`.
pub fn router(document: utoipa::openapi::OpenApi) -> Router<AppState> {
    let config = Config::default()
        // The default validator badge would load from another host.
        .validator_url("none")
        .try_it_out_enabled(true);
    let docs: Router<AppState> = SwaggerUi::new(DOCS_PATH)
        .url(DOCUMENT_PATH, document)
        .config(config)
        .into();
    // The browser enforces what the vendored page promises: everything from this origin.
    docs.layer(SetResponseHeaderLayer::overriding(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    ))
    // Swagger UI's own refusals (an empty 404 for a file it does not have, a plain-text
    // 400 for a path that does not decode) carry no code; the API's do.
    .layer(axum::middleware::map_response(
        |response: Response| async move {
            if response.status().is_client_error() {
                ApiError::new(ErrorCode::AssetNotFound, "no such file of the docs page")
                    .into_response()
            } else {
                response
            }
        },
    ))
}
