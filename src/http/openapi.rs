//! The API description served at `/v1/openapi.json`: generated from the handlers'
//! annotations and the request and response types themselves, and checked against the
//! route table by a test, so that it cannot drift from what jobd serves.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The OpenAPI document of every route in [`super::routes()`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "jobd",
        description = "A job-processing daemon: submit jobs over HTTP, watch and control them. \
                       Errors are RFC 9457 problem details naming the field at fault."
    ),
    paths(
        super::submit::post_jobs,
        super::jobs::list_jobs,
        super::jobs::get_job,
        super::jobs::cancel_job,
        super::jobs::retry_job,
        super::jobs::retry_dead_jobs,
        super::submit::post_payloads,
        super::ops::get_stats,
        super::queues::list_queues,
        super::queues::pause_queue,
        super::queues::resume_queue,
        super::console::whoami,
        get_openapi,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::get_metrics,
    ),
    components(schemas(
        crate::submission::JobOptions,
        crate::submission::PayloadCollection,
        crate::submission::FieldError,
        super::problem::ProblemBody,
        super::submit::Accepted,
        super::AcceptedJob,
        super::jobs::JobList,
        super::jobs::BulkRetried,
        super::console::WhoAmI,
        super::queues::QueueList,
        super::queues::QueueInfo,
        super::queues::QueuePaused,
        super::ops::Health,
        crate::job::JobRecord,
        crate::job::JobResult,
        crate::job::JobState,
        crate::job::JobId,
    )),
    modifiers(&BearerScheme, &KindFields)
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme that the protected operations name.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token from the token file (tokens_file); each route needs one scope."))
                    .build(),
            ),
        );
    }
}

/// Completes the `Job` schema from the kinds' registry: the list of kinds, and each kind's
/// own request fields, so that a new kind appears in the document without an edit here.
struct KindFields;

impl Modify for KindFields {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, SchemaType, Type};
        let Some(components) = openapi.components.as_mut() else { return };
        let Some(RefOr::T(Schema::Object(job))) = components.schemas.get_mut("Job") else { return };
        let names: Vec<&str> = crate::kinds::all_names().collect();
        let kind = ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .enum_values(Some(names))
            .description(Some("The job's kind; `sleep`, `fail` and `panic` exist only with test_kinds."))
            .build();
        job.properties.insert("kind".to_owned(), RefOr::T(Schema::Object(kind)));
        for registration in crate::kinds::REGISTRY {
            if let RefOr::T(Schema::Object(Object { properties, .. })) = (registration.request_schema)() {
                for (name, schema) in properties {
                    job.properties.entry(name).or_insert(schema);
                }
            }
        }
    }
}

/// The document as JSON, built once: it is the same for the life of the process.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi().to_pretty_json().unwrap_or_else(|error| {
            // Serializing the derived document cannot fail; an empty object keeps the route total.
            tracing::error!(%error, "serializing the OpenAPI document failed");
            "{}".to_owned()
        })
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", body = Object))
)]
pub async fn get_openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(document())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::routes::{Access, routes};

    /// Every route in the table is described with its method and its security, and
    /// nothing else is: the router and the description come from one list.
    #[test]
    fn the_document_describes_exactly_the_routes_served() {
        let document = ApiDoc::openapi();
        let mut described = Vec::new();
        for (path, item) in &document.paths.paths {
            let operations = [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
                ("HEAD", &item.head),
                ("OPTIONS", &item.options),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    let secured = operation.security.as_ref().is_some_and(|requirements| !requirements.is_empty());
                    described.push((path.clone(), method.to_owned(), secured));
                }
            }
        }
        let mut served: Vec<(String, String, bool)> = routes()
            .iter()
            .map(|spec| (spec.path.to_owned(), spec.method.as_str().to_owned(), spec.access != Access::Open))
            .collect();
        described.sort();
        served.sort();
        assert_eq!(described, served);
    }

    #[test]
    fn every_schema_the_operations_name_is_defined() {
        let text = document();
        let value: serde_json::Value = serde_json::from_str(text).expect("JSON");
        let schemas = value["components"]["schemas"].as_object().expect("schemas");
        let mut rest = text;
        let mut references = 0;
        while let Some(start) = rest.find("#/components/schemas/") {
            rest = &rest[start + "#/components/schemas/".len()..];
            let name: String = rest.chars().take_while(|c| *c != '"').collect();
            assert!(schemas.contains_key(&name), "{name} is referenced but not defined");
            references += 1;
        }
        assert!(references > 10, "only {references} schema references");
        assert!(value["components"]["securitySchemes"]["bearer"].is_object());
    }
}
