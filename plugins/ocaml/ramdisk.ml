(* A RAM disk plugin in OCaml: size=SIZE (default 16M, any size
 * NBDKit.parse_size takes; the magic key, so a bare "64M" works too),
 * readable and writable, with flush, trim, zero and extents.
 *
 *   plugins/ocaml/build.sh DIR
 *   nbdkit DIR/nbdkit-ocamlramdisk-plugin.so 64M
 *)

let disk = ref (Bytes.create 0)
let size = ref (Int64.of_int (16 * 1024 * 1024))

let config key value =
  match key with
  | "size" -> size := NBDKit.parse_size value
  | _ -> failwith (Printf.sprintf "unknown parameter: %s" key)

let get_ready () = disk := Bytes.make (Int64.to_int !size) '\000'

type handle = { readonly : bool }

let open_connection readonly =
  NBDKit.debug "ocamlramdisk: open readonly=%b export=%S"
    readonly (NBDKit.export_name ());
  { readonly }

let get_size _ = Int64.of_int (Bytes.length !disk)

let pread _ count offset _ =
  Bytes.sub_string !disk (Int64.to_int offset) (Int32.to_int count)

let pwrite _ buf offset _ =
  Bytes.blit_string buf 0 !disk (Int64.to_int offset) (String.length buf)

let zero _ count offset _ =
  Bytes.fill !disk (Int64.to_int offset) (Int32.to_int count) '\000'

(* 4 KiB blocks of zeroes are holes. *)
let extents _ count offset _ =
  let block = 4096L in
  let len = Int64.of_int (Bytes.length !disk) in
  let last = min len (Int64.add offset (Int64.of_int32 count)) in
  let rec go start acc =
    if start >= last then List.rev acc
    else
      let stop = min len (Int64.add start block) in
      let n = Int64.to_int (Int64.sub stop start) in
      let is_zero =
        Bytes.sub_string !disk (Int64.to_int start) n = String.make n '\000' in
      let e = { NBDKit.offset = start; length = Int64.sub stop start;
                is_hole = is_zero; is_zero } in
      go stop (e :: acc)
  in
  go (Int64.sub offset (Int64.rem offset block)) []

let dump_plugin () = print_endline "ocamlramdisk_block=4096"

let () =
  NBDKit.register_plugin
    ~name:"ocamlramdisk"
    ~version:(NBDKit.version ())
    ~config
    ~config_help:"size=<SIZE>    Size of the disk (default 16M)."
    ~magic_config_key:"size"
    ~get_ready
    ~thread_model:(fun () -> NBDKit.THREAD_MODEL_PARALLEL)
    ~open_connection
    ~get_size
    ~can_write:(fun h -> not h.readonly)
    ~can_flush:(fun _ -> true)
    ~can_trim:(fun _ -> true)
    ~can_zero:(fun _ -> true)
    ~can_multi_conn:(fun _ -> true)
    ~can_extents:(fun _ -> true)
    ~pread
    ~pwrite
    ~flush:(fun _ _ -> ())
    ~trim:zero
    ~zero
    ~extents
    ~dump_plugin
    ()
