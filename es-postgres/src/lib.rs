//! PostgreSQL store (in progress).
