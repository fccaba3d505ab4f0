//! The server's tests, one binary: the API in-process (`api`), a load test on 127.0.0.1
//! (`load`), the page in a headless browser (`browser`), and what they share (`common`).

#![allow(clippy::unwrap_used)]

mod api;
mod browser;
mod common;
mod load;
