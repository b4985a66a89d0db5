;; A WASI command for the iceOS sandbox: reads the JSON inputs on stdin and writes
;; {"echo": <inputs>} on stdout. Compile-free: the sandbox accepts WebAssembly text.
;;
;;   curl -s -X POST localhost:8080/v1/projects/default/sandbox:execute \
;;     -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
;;     -d "{\"language\": \"LANGUAGE_WASM\", \"inputs\": {\"x\": 1},
;;          \"wasmModule\": \"$(base64 -w0 examples/sandbox/echo.wat)\"}"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  ;; 0..7: one iovec; 8..11: bytes read or written; 16..: fixed text; 1024..128KiB: input.
  (memory (export "memory") 2)
  (data (i32.const 16) "{\"echo\":")
  (data (i32.const 32) "}")

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
      (then (call $proc_exit (i32.const 2)))))

  (func (export "_start")
    (local $end i32)
    (local $n i32)
    (local.set $end (i32.const 1024))
    (block $done
      (loop $more
        (i32.store (i32.const 0) (local.get $end))
        (i32.store (i32.const 4) (i32.sub (i32.const 131072) (local.get $end)))
        (br_if $done (i32.eqz (i32.load (i32.const 4))))
        (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $proc_exit (i32.const 1))))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $end (i32.add (local.get $end) (local.get $n)))
        (br $more)))
    (call $write (i32.const 16) (i32.const 8))
    (call $write (i32.const 1024) (i32.sub (local.get $end) (i32.const 1024)))
    (call $write (i32.const 32) (i32.const 1))))
