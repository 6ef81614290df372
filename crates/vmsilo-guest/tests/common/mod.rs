//! Helpers shared by the agent's test binaries.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use vmsilo_proto::client::AttachedIo;

/// A `Write` whose bytes can be read back after the writer was moved into the client.
#[derive(Clone, Default)]
pub struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Buf {
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

/// Attached-mode I/O: optional stdin bytes, captured stdout and stderr, no controls.
pub fn captured(stdin: Option<Vec<u8>>, stdout: &Buf, stderr: &Buf) -> AttachedIo {
    AttachedIo {
        stdin: stdin.map(|d| Box::new(io::Cursor::new(d)) as Box<dyn Read + Send>),
        stdout: Box::new(stdout.clone()),
        stderr: Box::new(stderr.clone()),
        controls: None,
    }
}
