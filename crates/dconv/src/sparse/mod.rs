//! Sparse matrix types with checked constructors.
