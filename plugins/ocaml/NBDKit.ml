(* nbdkit-rs: the OCaml side of the NBDKit module (see NBDKit.mli).
 *
 * register_plugin wraps each callback so that it returns
 * (result, message) result instead of raising, registers it under
 * "nbdkit.NAME" (Callback.register), and tells the C side
 * (nbdkitocaml.c) the plugin's strings and which callbacks exist.
 *)

type flags = flag list
and flag = May_trim | FUA | Req_one

type fua_flag = FuaNone | FuaEmulate | FuaNative

type cache_flag = CacheNone | CacheEmulate | CacheNop

type extent = {
  offset : int64;
  length : int64;
  is_hole : bool;
  is_zero : bool;
}

type export = {
  name : string;
  description : string option;
}

type thread_model =
| THREAD_MODEL_SERIALIZE_CONNECTIONS
| THREAD_MODEL_SERIALIZE_ALL_REQUESTS
| THREAD_MODEL_SERIALIZE_REQUESTS
| THREAD_MODEL_PARALLEL

external c_register : string array -> string list -> unit = "nbdkit_ocaml_register"
external c_debug : string -> unit = "nbdkit_ocaml_debug"
external c_set_error : int -> unit = "nbdkit_ocaml_set_error"
external c_parse_size : string -> int64 = "nbdkit_ocaml_parse_size"
external c_parse_bool : string -> bool = "nbdkit_ocaml_parse_bool"
external c_parse_probability : string -> string -> float = "nbdkit_ocaml_parse_probability"
external c_read_password : string -> string = "nbdkit_ocaml_read_password"
external c_realpath : string -> string = "nbdkit_ocaml_realpath"
external c_stdio_safe : unit -> bool = "nbdkit_ocaml_stdio_safe"
external c_nanosleep : int -> int -> unit = "nbdkit_ocaml_nanosleep"
external c_export_name : unit -> string = "nbdkit_ocaml_export_name"
external c_is_tls : unit -> bool = "nbdkit_ocaml_is_tls"
external c_shutdown : unit -> unit = "nbdkit_ocaml_shutdown"
external c_peer_pid : unit -> int64 = "nbdkit_ocaml_peer_pid"
external c_peer_uid : unit -> int64 = "nbdkit_ocaml_peer_uid"
external c_peer_gid : unit -> int64 = "nbdkit_ocaml_peer_gid"
external c_version : unit -> string = "nbdkit_ocaml_version"

let message = function
  | Failure msg | Invalid_argument msg -> msg
  | e -> Printexc.to_string e

let wrap1 f a = try Ok (f a) with e -> Error (message e)
let wrap2 f a b = try Ok (f a b) with e -> Error (message e)
let wrap4 f a b c d = try Ok (f a b c d) with e -> Error (message e)

let registered = ref false

let register_plugin ~name ?(longname = "") ?(version = "") ?(description = "")
    ?load ?get_ready ?after_fork ?cleanup ?unload
    ?config ?config_complete ?(config_help = "") ?thread_model
    ?(magic_config_key = "")
    ?preconnect ~open_connection ?close
    ~get_size ?block_size ?can_cache ?can_extents ?can_fast_zero ?can_flush
    ?can_fua ?can_multi_conn ?can_trim ?can_write ?can_zero ?is_rotational
    ~pread ?pwrite ?flush ?trim ?zero ?extents ?cache
    ?dump_plugin ?list_exports ?default_export ?export_description
    () =
  if !registered then failwith "NBDKit.register_plugin: called more than once";
  registered := true;
  let present = ref [] in
  let reg cb_name wrapped =
    Callback.register ("nbdkit." ^ cb_name) wrapped;
    present := cb_name :: !present in
  let opt1 cb_name = function None -> () | Some f -> reg cb_name (wrap1 f) in
  let opt2 cb_name = function None -> () | Some f -> reg cb_name (wrap2 f) in
  let opt4 cb_name = function None -> () | Some f -> reg cb_name (wrap4 f) in
  opt1 "load" load;
  opt1 "get_ready" get_ready;
  opt1 "after_fork" after_fork;
  opt1 "cleanup" cleanup;
  opt1 "unload" unload;
  opt2 "config" config;
  opt1 "config_complete" config_complete;
  opt1 "thread_model" thread_model;
  opt1 "preconnect" preconnect;
  reg "open" (wrap1 open_connection);
  opt1 "close" close;
  reg "get_size" (wrap1 get_size);
  opt1 "block_size" block_size;
  opt1 "can_cache" can_cache;
  opt1 "can_extents" can_extents;
  opt1 "can_fast_zero" can_fast_zero;
  opt1 "can_flush" can_flush;
  opt1 "can_fua" can_fua;
  opt1 "can_multi_conn" can_multi_conn;
  opt1 "can_trim" can_trim;
  opt1 "can_write" can_write;
  opt1 "can_zero" can_zero;
  opt1 "is_rotational" is_rotational;
  reg "pread" (wrap4 pread);
  opt4 "pwrite" pwrite;
  opt2 "flush" flush;
  opt4 "trim" trim;
  opt4 "zero" zero;
  opt4 "extents" extents;
  opt4 "cache" cache;
  (* What the plugin prints must come out before the server's next line. *)
  opt1 "dump_plugin"
    (Option.map (fun f () -> f (); flush_all ()) dump_plugin);
  opt2 "list_exports" list_exports;
  opt2 "default_export" default_export;
  opt1 "export_description" export_description;
  c_register
    [| name; longname; version; description; config_help; magic_config_key |]
    !present

(* Linux's numbers for Unix.error. *)
let errno_of_unix_error : Unix.error -> int = function
  | Unix.E2BIG -> 7 | EACCES -> 13 | EAGAIN -> 11 | EBADF -> 9 | EBUSY -> 16
  | ECHILD -> 10 | EDEADLK -> 35 | EDOM -> 33 | EEXIST -> 17 | EFAULT -> 14
  | EFBIG -> 27 | EINTR -> 4 | EINVAL -> 22 | EIO -> 5 | EISDIR -> 21
  | EMFILE -> 24 | EMLINK -> 31 | ENAMETOOLONG -> 36 | ENFILE -> 23
  | ENODEV -> 19 | ENOENT -> 2 | ENOEXEC -> 8 | ENOLCK -> 37 | ENOMEM -> 12
  | ENOSPC -> 28 | ENOSYS -> 38 | ENOTDIR -> 20 | ENOTEMPTY -> 39
  | ENOTTY -> 25 | ENXIO -> 6 | EPERM -> 1 | EPIPE -> 32 | ERANGE -> 34
  | EROFS -> 30 | ESPIPE -> 29 | ESRCH -> 3 | EXDEV -> 18
  | EWOULDBLOCK -> 11 | EINPROGRESS -> 115 | EALREADY -> 114
  | ENOTSOCK -> 88 | EDESTADDRREQ -> 89 | EMSGSIZE -> 90 | EPROTOTYPE -> 91
  | ENOPROTOOPT -> 92 | EPROTONOSUPPORT -> 93 | ESOCKTNOSUPPORT -> 94
  | EOPNOTSUPP -> 95 | EPFNOSUPPORT -> 96 | EAFNOSUPPORT -> 97
  | EADDRINUSE -> 98 | EADDRNOTAVAIL -> 99 | ENETDOWN -> 100
  | ENETUNREACH -> 101 | ENETRESET -> 102 | ECONNABORTED -> 103
  | ECONNRESET -> 104 | ENOBUFS -> 105 | EISCONN -> 106 | ENOTCONN -> 107
  | ESHUTDOWN -> 108 | ETOOMANYREFS -> 109 | ETIMEDOUT -> 110
  | ECONNREFUSED -> 111 | EHOSTDOWN -> 112 | EHOSTUNREACH -> 113
  | ELOOP -> 40 | EOVERFLOW -> 75 | EUNKNOWNERR n -> n

let set_error e = c_set_error (errno_of_unix_error e)

let debug fmt = Printf.ksprintf c_debug fmt

let parse_size = c_parse_size
let parse_bool = c_parse_bool
let parse_probability = c_parse_probability
let read_password = c_read_password
let realpath = c_realpath
let stdio_safe = c_stdio_safe
let nanosleep = c_nanosleep
let export_name = c_export_name
let is_tls = c_is_tls
let shutdown = c_shutdown
let peer_pid = c_peer_pid
let peer_uid = c_peer_uid
let peer_gid = c_peer_gid
let version = c_version
let api_version () = 2
