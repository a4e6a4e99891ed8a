//! A plugin built against `switchboard:channel@1.0.0`, which this host does not implement. Its
//! manifest ships beside the `.wasm` (not embedded), which also exercises that loading path.

wit_bindgen::generate!({ path: "wit", world: "channel-plugin" });

struct Future;

impl exports::switchboard::channel::decoder::Guest for Future {
    fn decode(payload: Vec<u8>) -> String {
        String::from_utf8_lossy(&payload).into_owned()
    }
}

export!(Future);
