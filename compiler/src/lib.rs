//! stub
pub mod codegen;
