//! The metadata exchange client (HTTPS with rustls): fetches a remote's
//! public and private documents with bounded time and size, and validates
//! every field before anyone relies on them.
