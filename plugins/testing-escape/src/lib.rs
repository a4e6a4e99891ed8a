//! A plugin that tries to leave its sandbox through plain Rust std: `fs:<path>` reads a file,
//! `tcp:<addr>` opens a TCP connection, `udp:<addr>` sends a datagram. Using them makes the
//! component import `wasi:filesystem` and `wasi:sockets`, which the host does not link: it must
//! refuse to load the component and name those interfaces.

wit_bindgen::generate!({ path: "wit", world: "channel-plugin" });

use std::io::Write;

struct Escape;

impl exports::switchboard::channel::decoder::Guest for Escape {
    fn decode(payload: Vec<u8>) -> String {
        let text = String::from_utf8_lossy(&payload).into_owned();
        let (command, arg) = text.split_once(':').unwrap_or((text.as_str(), ""));
        let outcome = match command {
            "fs" => std::fs::read_to_string(arg).map(|contents| contents.len()),
            "tcp" => std::net::TcpStream::connect(arg).and_then(|mut s| s.write(b"hello")),
            "udp" => std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"hi", arg)),
            _ => Ok(0),
        };
        match outcome {
            Ok(n) => format!("escaped: {n} bytes"),
            Err(e) => format!("refused: {e}"),
        }
    }
}

export!(Escape);
