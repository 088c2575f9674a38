//! A request's job fields that belong to its kind, handed to [`super::Kind::validate`]
//! unparsed, so that each kind reads its own fields and any left over are refused.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A problem with one field of a job: the field's name (or path within the job) and what
/// is wrong. The caller adds the job's index.
pub type FieldProblem = (String, String);

/// A [`FieldProblem`] for `field`.
pub fn field_problem(field: &str, message: impl Into<String>) -> FieldProblem {
    (field.to_owned(), message.into())
}

/// The fields of one request's job that are not common to every job, as unparsed JSON
/// borrowed from the request body, in the order they came.
#[derive(Debug, Default)]
pub struct RequestFields<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RequestFields<'a> {
    /// Adds a field as it was read; a second field of the same name is an error.
    pub(crate) fn push(&mut self, name: Cow<'a, str>, value: &'a RawValue) -> Result<(), FieldProblem> {
        if self.fields.iter().any(|(existing, _)| *existing == name) {
            return Err(field_problem(&name, "is given twice"));
        }
        self.fields.push((name, value));
        Ok(())
    }

    /// How many fields are held.
    pub(crate) fn len(&self) -> usize {
        self.fields.len()
    }

    /// Takes the field `name` unparsed, if present.
    pub fn take_raw(&mut self, name: &str) -> Option<&'a RawValue> {
        let position = self.fields.iter().position(|(field, _)| field == name)?;
        Some(self.fields.remove(position).1)
    }

    /// Takes the field `name` and parses it as `T`; a value that does not parse is a
    /// problem naming the field. An explicit `null` counts as absent.
    pub fn take<T: Deserialize<'a>>(&mut self, name: &str) -> Result<Option<T>, FieldProblem> {
        match self.take_raw(name) {
            None => Ok(None),
            Some(raw) => serde_json::from_str::<Option<T>>(raw.get())
                .map_err(|error| field_problem(name, strip_position(&error))),
        }
    }

    /// The names of the fields no one took.
    pub(crate) fn remaining(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(name, _)| name.as_ref())
    }
}

/// serde_json appends " at line L column C" to data errors; inside a nested value those
/// positions are relative to the fragment and would mislead, so they are dropped.
pub(crate) fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(position) => text[..position].to_owned(),
        None => text,
    }
}
