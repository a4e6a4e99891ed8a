"""switchboard_sdk: helpers for switchboard channel plugins written in Python.

A plugin is a WebAssembly component of the world `channel-plugin` of
`switchboard:channel@0.2.0` (the `wit/` directory of the switchboard repository), built with
componentize-py. componentize-py generates the `wit_world` package from `wit/`; this SDK is
plain Python on top of it:

- :mod:`switchboard_sdk.defaults` - base classes for the six exports that answer "not
  supported" for everything a channel does not serve (WebSocket, long-poll, streaming, ...), so
  a plugin overrides only what its manifest declares;
- :mod:`switchboard_sdk.errors` - the plugin errors the host expects, raised as
  ``componentize_py_types.Err``;
- :mod:`switchboard_sdk.jsonutil` - JSON parsing whose failures are clear ``invalid-input``
  errors naming the field;
- :mod:`switchboard_sdk.signing` - HMAC-SHA256 through the host's native ``crypto`` import,
  compared in constant time (``crypto.constant-time-eq``), never with ``==``;
- :mod:`switchboard_sdk.settings` - the installation's config values and secrets;
- :mod:`switchboard_sdk.kvcache` - values cached in the host's ``kv`` with a time-to-live.

The SDK owns no state between calls (the host may recycle an instance between any two calls)
and never logs secrets.
"""

__version__ = "0.1.0"
