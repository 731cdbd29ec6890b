//! Patch metadata: which fields merge, by which key.
//!
//! apimachinery reads `patchStrategy`/`patchMergeKey` struct tags by reflection. We keep the same
//! information as a small static type graph: a [`TypeDef`] lists only the fields that carry patch
//! metadata or lead to one, and a type is shared wherever Kubernetes reuses the Go struct (one
//! `Container` serves `spec.containers`, `spec.template.spec.initContainers`, ...).

mod kinds;

/// How a strategic merge patch treats one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// No patch metadata: objects merge key by key, lists are replaced whole.
    Default,
    /// `patchStrategy:"merge"` + `patchMergeKey`: a list of objects merged by that key.
    MergeByKey(&'static str),
    /// `patchStrategy:"merge"` on a list of scalars (e.g. `finalizers`): a set union that keeps order.
    MergeSet,
    /// `patchStrategy:"replace"` on an object: the patch value replaces the original.
    Replace,
}

/// One field that carries patch metadata, or that leads to a type that does.
#[derive(Debug)]
pub struct FieldDef {
    /// JSON field name.
    pub name: &'static str,
    /// Strategy for this field's value.
    pub strategy: Strategy,
    /// Type of the value (for lists: of each element); `None` means no metadata below.
    pub ty: Option<&'static TypeDef>,
}

/// A struct type, reduced to the fields that matter for patching.
#[derive(Debug)]
pub struct TypeDef {
    /// Go type name, for documentation and debugging.
    pub name: &'static str,
    /// Fields with patch metadata (or leading to types with it).
    pub fields: &'static [FieldDef],
}

/// Where a strategic merge patch currently is in the type graph.
///
/// An untyped schema (unknown kinds, or fields below the modelled depth) gives every field
/// [`Strategy::Default`], which is what apimachinery does for types without patch metadata:
/// JSON-merge-patch behaviour for objects, and lists replaced.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    ty: Option<&'static TypeDef>,
}

// === impl FieldDef ===

impl FieldDef {
    /// A plain (object) field whose type has patch metadata further down.
    pub const fn object(name: &'static str, ty: &'static TypeDef) -> Self {
        Self {
            name,
            strategy: Strategy::Default,
            ty: Some(ty),
        }
    }

    /// A list of objects merged by `key`, with element type `ty`.
    pub const fn merge_by(
        name: &'static str,
        key: &'static str,
        ty: Option<&'static TypeDef>,
    ) -> Self {
        Self {
            name,
            strategy: Strategy::MergeByKey(key),
            ty,
        }
    }

    /// A list of scalars merged as an ordered set.
    pub const fn set(name: &'static str) -> Self {
        Self {
            name,
            strategy: Strategy::MergeSet,
            ty: None,
        }
    }

    /// A field listed only to document that Kubernetes replaces it whole (atomic list).
    pub const fn atomic(name: &'static str) -> Self {
        Self {
            name,
            strategy: Strategy::Default,
            ty: None,
        }
    }
}

// === impl Schema ===

impl Schema {
    /// No patch metadata anywhere.
    pub const UNTYPED: Self = Self { ty: None };

    /// The schema rooted at `ty` (for tests, or kinds the table does not know yet).
    pub const fn from_type(ty: &'static TypeDef) -> Self {
        Self { ty: Some(ty) }
    }

    /// The schema of a built-in kind; [`Schema::UNTYPED`] for anything the table does not model.
    ///
    /// `group` is the API group without version (`""` for core, `"apps"`, ...).
    pub fn for_kind(group: &str, kind: &str) -> Self {
        kinds::root(group, kind).map_or(Self::UNTYPED, Self::from_type)
    }

    /// Whether the kind was found in the table.
    pub fn is_typed(&self) -> bool {
        self.ty.is_some()
    }

    /// The field definition at a dotted path such as `spec.template.spec.containers.env`.
    ///
    /// List fields are stepped through transparently, so the path names fields only.
    pub fn lookup(&self, path: &str) -> Option<&'static FieldDef> {
        let mut ty = self.ty;
        let mut found = None;
        for name in path.split('.') {
            let field = ty?.fields.iter().find(|f| f.name == name)?;
            found = Some(field);
            ty = field.ty;
        }
        found
    }

    /// Strategy of field `name` and the schema of its value (or list elements).
    pub(crate) fn field(&self, name: &str) -> (Strategy, Schema) {
        let field = self
            .ty
            .and_then(|ty| ty.fields.iter().find(|f| f.name == name));
        match field {
            Some(f) => (f.strategy, Schema { ty: f.ty }),
            None => (Strategy::Default, Self::UNTYPED),
        }
    }
}
