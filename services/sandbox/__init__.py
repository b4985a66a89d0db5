"""The sandbox service: isolated execution of untrusted Python and WASM."""
