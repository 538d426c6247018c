(* nbdkit-rs: the OCaml plugin API of nbdkit 1.36 (nbdkit-ocaml-plugin(3)).
 *
 * A plugin calls [register_plugin] once, from its module initialisation,
 * and is linked into a shared object:
 *
 *   ocamlopt.opt -output-obj -runtime-variant _pic \
 *                -o nbdkit-myplugin-plugin.so \
 *                -I DIR NBDKit.cmx myplugin.ml -ccopt -LDIR -cclib -lnbdkitocaml
 *
 * where DIR holds what plugins/ocaml/build.sh builds (NBDKit.cmi,
 * NBDKit.cmx, NBDKit.o, libnbdkitocaml.a).
 *)

(** Interface between nbdkit plugins written in OCaml and the server. *)

(** {2 Types} *)

(** Flags the server passes to the data callbacks. *)
type flags = flag list
and flag = May_trim | FUA | Req_one

(** What [can_fua] returns. *)
type fua_flag = FuaNone | FuaEmulate | FuaNative

(** What [can_cache] returns ([CacheNop]: caching is accepted and does
    nothing, the plugin's [cache] is called). *)
type cache_flag = CacheNone | CacheEmulate | CacheNop

(** One entry of the list that [extents] returns. *)
type extent = {
  offset : int64;
  length : int64;
  is_hole : bool;
  is_zero : bool;
}

(** One entry of the list that [list_exports] returns. *)
type export = {
  name : string;
  description : string option;
}

(** What [thread_model] returns. Whatever the model, the OCaml code runs
    one callback at a time (the OCaml runtime is entered by one thread at
    a time). *)
type thread_model =
| THREAD_MODEL_SERIALIZE_CONNECTIONS
| THREAD_MODEL_SERIALIZE_ALL_REQUESTS
| THREAD_MODEL_SERIALIZE_REQUESTS
| THREAD_MODEL_PARALLEL

(** {2 Registering the plugin} *)

(** Register the plugin. ['a] is the type of the connection handle that
    [open_connection] returns and every connected callback receives.
    A callback fails by raising an exception: [Failure msg] and
    [Invalid_argument msg] are reported as [msg], others as
    [Printexc.to_string]; the client gets EIO unless [set_error] was
    called first. *)
val register_plugin :
  name: string ->
  ?longname: string ->
  ?version: string ->
  ?description: string ->

  ?load: (unit -> unit) ->
  ?get_ready: (unit -> unit) ->
  ?after_fork: (unit -> unit) ->
  ?cleanup: (unit -> unit) ->
  ?unload: (unit -> unit) ->

  ?config: (string -> string -> unit) ->
  ?config_complete: (unit -> unit) ->
  ?config_help: string ->
  ?thread_model: (unit -> thread_model) ->
  ?magic_config_key: string ->

  ?preconnect: (bool -> unit) ->
  open_connection: (bool -> 'a) ->
  ?close: ('a -> unit) ->

  get_size: ('a -> int64) ->
  ?block_size: ('a -> int * int * int64) ->
  ?can_cache: ('a -> cache_flag) ->
  ?can_extents: ('a -> bool) ->
  ?can_fast_zero: ('a -> bool) ->
  ?can_flush: ('a -> bool) ->
  ?can_fua: ('a -> fua_flag) ->
  ?can_multi_conn: ('a -> bool) ->
  ?can_trim: ('a -> bool) ->
  ?can_write: ('a -> bool) ->
  ?can_zero: ('a -> bool) ->
  ?is_rotational: ('a -> bool) ->

  pread: ('a -> int32 -> int64 -> flags -> string) ->
  ?pwrite: ('a -> string -> int64 -> flags -> unit) ->
  ?flush: ('a -> flags -> unit) ->
  ?trim: ('a -> int32 -> int64 -> flags -> unit) ->
  ?zero: ('a -> int32 -> int64 -> flags -> unit) ->
  ?extents: ('a -> int32 -> int64 -> flags -> extent list) ->
  ?cache: ('a -> int32 -> int64 -> flags -> unit) ->

  ?dump_plugin: (unit -> unit) ->
  ?list_exports: (bool -> bool -> export list) ->
  ?default_export: (bool -> bool -> string) ->
  ?export_description: ('a -> string) ->

  unit ->
  unit

(** {2 Errors and debugging} *)

(** The errno the client gets when the current callback fails
    ([nbdkit_set_error]). *)
val set_error : Unix.error -> unit

(** A message shown in verbose mode ([nbdkit_debug]), printf-like. *)
val debug : ('a, unit, string, unit) format4 -> 'a

(** {2 Parameters} (these raise [Invalid_argument] on error, after the
    server has logged the reason) *)

val parse_size : string -> int64
val parse_bool : string -> bool
val parse_probability : string -> string -> float
val read_password : string -> string
val realpath : string -> string
val stdio_safe : unit -> bool

(** {2 The server and the client} *)

val nanosleep : int -> int -> unit
val export_name : unit -> string
val is_tls : unit -> bool
val shutdown : unit -> unit
val peer_pid : unit -> int64
val peer_uid : unit -> int64
val peer_gid : unit -> int64

(** The nbdkit version these bindings were built for. *)
val version : unit -> string

(** The plugin API version (2). *)
val api_version : unit -> int
