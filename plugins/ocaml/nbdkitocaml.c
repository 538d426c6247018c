/* nbdkit-rs: the C side of the NBDKit OCaml module (libnbdkitocaml.a).
 *
 * Linked into an OCaml plugin built with ocamlopt -output-obj: when the
 * server dlopens the shared object, the constructor below starts the
 * OCaml runtime, which runs the plugin's module initialisation and with
 * it NBDKit.register_plugin; that calls nbdkit_ocaml_register, which
 * fills in the struct nbdkit_plugin that plugin_init returns.
 *
 * Threads: the OCaml runtime (4.x, without the threads library) may only
 * be entered by one thread at a time, so every call into OCaml holds one
 * process-wide lock from before the first OCaml value is touched until
 * after the last (the CAMLparam/CAMLreturn pairs live in the *_locked
 * functions, called only with the lock held). The thread model the
 * plugin declares is reported as it is; its OCaml code just never runs
 * on two threads at once.
 */

#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAML_NAME_SPACE
#include <caml/alloc.h>
#include <caml/callback.h>
#include <caml/fail.h>
#include <caml/memory.h>
#include <caml/mlvalues.h>
#include <caml/printexc.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

enum cb {
  CB_LOAD, CB_GET_READY, CB_AFTER_FORK, CB_CLEANUP, CB_UNLOAD,
  CB_CONFIG, CB_CONFIG_COMPLETE, CB_THREAD_MODEL, CB_PRECONNECT,
  CB_OPEN, CB_CLOSE, CB_GET_SIZE, CB_BLOCK_SIZE, CB_CAN_CACHE,
  CB_CAN_EXTENTS, CB_CAN_FAST_ZERO, CB_CAN_FLUSH, CB_CAN_FUA,
  CB_CAN_MULTI_CONN, CB_CAN_TRIM, CB_CAN_WRITE, CB_CAN_ZERO,
  CB_IS_ROTATIONAL, CB_PREAD, CB_PWRITE, CB_FLUSH, CB_TRIM, CB_ZERO,
  CB_EXTENTS, CB_CACHE, CB_DUMP_PLUGIN, CB_LIST_EXPORTS,
  CB_DEFAULT_EXPORT, CB_EXPORT_DESCRIPTION,
  CB_MAX
};

/* The names NBDKit.ml registers them under, after "nbdkit.". */
static const char *cb_names[CB_MAX] = {
  "load", "get_ready", "after_fork", "cleanup", "unload",
  "config", "config_complete", "thread_model", "preconnect",
  "open", "close", "get_size", "block_size", "can_cache",
  "can_extents", "can_fast_zero", "can_flush", "can_fua",
  "can_multi_conn", "can_trim", "can_write", "can_zero",
  "is_rotational", "pread", "pwrite", "flush", "trim", "zero",
  "extents", "cache", "dump_plugin", "list_exports",
  "default_export", "export_description",
};

/* The registered closures (roots owned by the OCaml runtime). */
static const value *cb[CB_MAX];

static struct nbdkit_plugin plugin;
static int registered;

static pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

#define LOCKED(type, expr)                      \
  ({                                            \
    type r_;                                    \
    pthread_mutex_lock (&lock);                 \
    r_ = (expr);                                \
    pthread_mutex_unlock (&lock);               \
    r_;                                         \
  })

/* The result of a wrapped callback, an (x, string) result, or an
 * exception that escaped anyway: 0 with the payload stored in *payload
 * (a registered root of the caller), or -1 after nbdkit_error.
 */
static int
result (enum cb which, value r, value *payload)
{
  if (Is_exception_result (r)) {
    char *msg = caml_format_exception (Extract_exception (r));
    nbdkit_error ("%s: %s", cb_names[which], msg);
    caml_stat_free (msg);
    return -1;
  }
  if (Tag_val (r) != 0) {
    nbdkit_error ("%s", String_val (Field (r, 0)));
    return -1;
  }
  *payload = Field (r, 0);
  return 0;
}

/* Call callback `which` with `args` (registered roots of the caller). */
static int
invoke (enum cb which, int nargs, value *args, value *payload)
{
  value r = caml_callbackN_exn (*cb[which], nargs, args);
  return result (which, r, payload);
}

static value
flags_list (uint32_t flags)
{
  CAMLparam0 ();
  CAMLlocal2 (list, cell);
  /* flag = May_trim | FUA | Req_one */
  static const uint32_t bits[3] = {
    NBDKIT_FLAG_MAY_TRIM, NBDKIT_FLAG_FUA, NBDKIT_FLAG_REQ_ONE
  };
  int i;

  list = Val_emptylist;
  for (i = 2; i >= 0; i--) {
    if (flags & bits[i]) {
      cell = caml_alloc (2, 0);
      Store_field (cell, 0, Val_int (i));
      Store_field (cell, 1, list);
      list = cell;
    }
  }
  CAMLreturn (list);
}

/* handle, count, offset, flags: the arguments of pread, trim, zero,
 * extents and cache, into args[0..3] (registered roots of the caller).
 */
static void
range_args (value *args, void *h, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  args[0] = *(value *) h;
  args[1] = caml_copy_int32 (count);
  args[2] = caml_copy_int64 (offset);
  args[3] = flags_list (flags);
}

/* --- calls with unit, bool, handle arguments --------------------------- */

static int
unit_locked (enum cb which)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 1);
  int r;

  args[0] = Val_unit;
  r = invoke (which, 1, args, &v);
  CAMLreturnT (int, r);
}

/* A callback of the handle returning a bool or a constant constructor. */
static int
int_locked (enum cb which, void *h, int is_bool)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 1);
  int r;

  args[0] = *(value *) h;
  r = invoke (which, 1, args, &v);
  if (r == 0)
    r = is_bool ? Bool_val (v) : Int_val (v);
  CAMLreturnT (int, r);
}

static void w_load (void) { LOCKED (int, unit_locked (CB_LOAD)); }
static void w_unload (void) { LOCKED (int, unit_locked (CB_UNLOAD)); }
static void w_cleanup (void) { LOCKED (int, unit_locked (CB_CLEANUP)); }
static void w_dump_plugin (void) { LOCKED (int, unit_locked (CB_DUMP_PLUGIN)); }
static int w_get_ready (void) { return LOCKED (int, unit_locked (CB_GET_READY)); }
static int w_after_fork (void) { return LOCKED (int, unit_locked (CB_AFTER_FORK)); }
static int w_config_complete (void) { return LOCKED (int, unit_locked (CB_CONFIG_COMPLETE)); }

static int
thread_model_locked (void)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 1);
  int r;

  args[0] = Val_unit;
  r = invoke (CB_THREAD_MODEL, 1, args, &v);
  /* THREAD_MODEL_* are in the order of NBDKIT_THREAD_MODEL_*. */
  if (r == 0)
    r = Int_val (v);
  CAMLreturnT (int, r);
}
static int w_thread_model (void) { return LOCKED (int, thread_model_locked ()); }

static int
config_locked (const char *key, const char *val)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 2);
  int r;

  args[0] = caml_copy_string (key);
  args[1] = caml_copy_string (val);
  r = invoke (CB_CONFIG, 2, args, &v);
  CAMLreturnT (int, r);
}
static int w_config (const char *k, const char *v) { return LOCKED (int, config_locked (k, v)); }

static int
preconnect_locked (int readonly)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 1);
  int r;

  args[0] = Val_bool (readonly);
  r = invoke (CB_PRECONNECT, 1, args, &v);
  CAMLreturnT (int, r);
}
static int w_preconnect (int ro) { return LOCKED (int, preconnect_locked (ro)); }

/* --- connections ------------------------------------------------------- */

static void *
open_locked (int readonly)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 1);
  value *root = NULL;

  args[0] = Val_bool (readonly);
  if (invoke (CB_OPEN, 1, args, &v) == 0) {
    /* The handle is any OCaml value: keep it in a root of its own. */
    root = malloc (sizeof *root);
    if (root == NULL)
      nbdkit_error ("malloc: %m");
    else {
      *root = v;
      caml_register_generational_global_root (root);
    }
  }
  CAMLreturnT (void *, root);
}
static void *w_open (int ro) { return LOCKED (void *, open_locked (ro)); }

static int
close_locked (void *h)
{
  if (cb[CB_CLOSE]) {
    CAMLparam0 ();
    CAMLlocal1 (v);
    CAMLlocalN (args, 1);
    args[0] = *(value *) h;
    invoke (CB_CLOSE, 1, args, &v);
    CAMLdrop;
  }
  caml_remove_generational_global_root ((value *) h);
  free (h);
  return 0;
}
static void w_close (void *h) { LOCKED (int, close_locked (h)); }

static int64_t
get_size_locked (void *h)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 1);
  int64_t r = -1;

  args[0] = *(value *) h;
  if (invoke (CB_GET_SIZE, 1, args, &v) == 0)
    r = Int64_val (v);
  CAMLreturnT (int64_t, r);
}
static int64_t w_get_size (void *h) { return LOCKED (int64_t, get_size_locked (h)); }

static int
block_size_locked (void *h, uint32_t *min, uint32_t *pref, uint32_t *max)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 1);
  int r;

  args[0] = *(value *) h;
  r = invoke (CB_BLOCK_SIZE, 1, args, &v);
  if (r == 0) {
    *min = Long_val (Field (v, 0));
    *pref = Long_val (Field (v, 1));
    *max = Int64_val (Field (v, 2));
  }
  CAMLreturnT (int, r);
}
static int
w_block_size (void *h, uint32_t *min, uint32_t *pref, uint32_t *max)
{
  return LOCKED (int, block_size_locked (h, min, pref, max));
}

static int w_can_write (void *h) { return LOCKED (int, int_locked (CB_CAN_WRITE, h, 1)); }
static int w_can_flush (void *h) { return LOCKED (int, int_locked (CB_CAN_FLUSH, h, 1)); }
static int w_is_rotational (void *h) { return LOCKED (int, int_locked (CB_IS_ROTATIONAL, h, 1)); }
static int w_can_trim (void *h) { return LOCKED (int, int_locked (CB_CAN_TRIM, h, 1)); }
static int w_can_zero (void *h) { return LOCKED (int, int_locked (CB_CAN_ZERO, h, 1)); }
static int w_can_fast_zero (void *h) { return LOCKED (int, int_locked (CB_CAN_FAST_ZERO, h, 1)); }
static int w_can_extents (void *h) { return LOCKED (int, int_locked (CB_CAN_EXTENTS, h, 1)); }
static int w_can_multi_conn (void *h) { return LOCKED (int, int_locked (CB_CAN_MULTI_CONN, h, 1)); }
/* FuaNone | FuaEmulate | FuaNative are NBDKIT_FUA_NONE/EMULATE/NATIVE;
 * CacheNone | CacheEmulate | CacheNop are NBDKIT_CACHE_NONE/EMULATE/NATIVE.
 */
static int w_can_fua (void *h) { return LOCKED (int, int_locked (CB_CAN_FUA, h, 0)); }
static int w_can_cache (void *h) { return LOCKED (int, int_locked (CB_CAN_CACHE, h, 0)); }

/* --- data -------------------------------------------------------------- */

static int
pread_locked (void *h, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 4);
  int r;

  range_args (args, h, count, offset, flags);
  r = invoke (CB_PREAD, 4, args, &v);
  if (r == 0) {
    if (caml_string_length (v) < count) {
      nbdkit_error ("pread: the string returned is %zu bytes, "
                    "shorter than the %" PRIu32 " bytes asked for",
                    (size_t) caml_string_length (v), count);
      r = -1;
    }
    else
      memcpy (buf, String_val (v), count);
  }
  CAMLreturnT (int, r);
}
static int
w_pread (void *h, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  return LOCKED (int, pread_locked (h, buf, count, offset, flags));
}

static int
pwrite_locked (void *h, const void *buf, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 4);
  int r;

  args[0] = *(value *) h;
  args[1] = caml_alloc_initialized_string (count, buf);
  args[2] = caml_copy_int64 (offset);
  args[3] = flags_list (flags);
  r = invoke (CB_PWRITE, 4, args, &v);
  CAMLreturnT (int, r);
}
static int
w_pwrite (void *h, const void *buf, uint32_t count, uint64_t offset,
          uint32_t flags)
{
  return LOCKED (int, pwrite_locked (h, buf, count, offset, flags));
}

static int
flush_locked (void *h, uint32_t flags)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 2);
  int r;

  args[0] = *(value *) h;
  args[1] = flags_list (flags);
  r = invoke (CB_FLUSH, 2, args, &v);
  CAMLreturnT (int, r);
}
static int w_flush (void *h, uint32_t f) { return LOCKED (int, flush_locked (h, f)); }

/* trim, zero, cache: handle, count, offset, flags -> unit. */
static int
range_locked (enum cb which, void *h, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 4);
  int r;

  range_args (args, h, count, offset, flags);
  r = invoke (which, 4, args, &v);
  CAMLreturnT (int, r);
}
static int
w_trim (void *h, uint32_t c, uint64_t o, uint32_t f)
{
  return LOCKED (int, range_locked (CB_TRIM, h, c, o, f));
}
static int
w_zero (void *h, uint32_t c, uint64_t o, uint32_t f)
{
  return LOCKED (int, range_locked (CB_ZERO, h, c, o, f));
}
static int
w_cache (void *h, uint32_t c, uint64_t o, uint32_t f)
{
  return LOCKED (int, range_locked (CB_CACHE, h, c, o, f));
}

static int
extents_locked (void *h, uint32_t count, uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents)
{
  CAMLparam0 ();
  CAMLlocal2 (v, e);
  CAMLlocalN (args, 4);
  int r;

  range_args (args, h, count, offset, flags);
  r = invoke (CB_EXTENTS, 4, args, &v);
  for (; r == 0 && v != Val_emptylist; v = Field (v, 1)) {
    uint32_t type = 0;
    e = Field (v, 0);           /* { offset; length; is_hole; is_zero } */
    if (Bool_val (Field (e, 2)))
      type |= NBDKIT_EXTENT_HOLE;
    if (Bool_val (Field (e, 3)))
      type |= NBDKIT_EXTENT_ZERO;
    if (nbdkit_add_extent (extents, Int64_val (Field (e, 0)),
                           Int64_val (Field (e, 1)), type) == -1)
      r = -1;
  }
  CAMLreturnT (int, r);
}
static int
w_extents (void *h, uint32_t c, uint64_t o, uint32_t f,
           struct nbdkit_extents *x)
{
  return LOCKED (int, extents_locked (h, c, o, f, x));
}

/* --- exports ----------------------------------------------------------- */

static int
list_exports_locked (int readonly, int is_tls, struct nbdkit_exports *exps)
{
  CAMLparam0 ();
  CAMLlocal2 (v, e);
  CAMLlocalN (args, 2);
  int r;

  args[0] = Val_bool (readonly);
  args[1] = Val_bool (is_tls);
  r = invoke (CB_LIST_EXPORTS, 2, args, &v);
  for (; r == 0 && v != Val_emptylist; v = Field (v, 1)) {
    const char *desc = NULL;
    e = Field (v, 0);           /* { name; description : string option } */
    if (Is_block (Field (e, 1)))
      desc = String_val (Field (Field (e, 1), 0));
    if (nbdkit_add_export (exps, String_val (Field (e, 0)), desc) == -1)
      r = -1;
  }
  CAMLreturnT (int, r);
}
static int
w_list_exports (int ro, int tls, struct nbdkit_exports *exps)
{
  return LOCKED (int, list_exports_locked (ro, tls, exps));
}

static const char *
default_export_locked (int readonly, int is_tls)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 2);
  const char *r = NULL;

  args[0] = Val_bool (readonly);
  args[1] = Val_bool (is_tls);
  if (invoke (CB_DEFAULT_EXPORT, 2, args, &v) == 0)
    r = nbdkit_strdup_intern (String_val (v));
  CAMLreturnT (const char *, r);
}
static const char *
w_default_export (int ro, int tls)
{
  return LOCKED (const char *, default_export_locked (ro, tls));
}

static const char *
export_description_locked (void *h)
{
  CAMLparam0 ();
  CAMLlocal1 (v);
  CAMLlocalN (args, 1);
  const char *r = NULL;

  args[0] = *(value *) h;
  if (invoke (CB_EXPORT_DESCRIPTION, 1, args, &v) == 0)
    r = nbdkit_strdup_intern (String_val (v));
  CAMLreturnT (const char *, r);
}
static const char *
w_export_description (void *h)
{
  return LOCKED (const char *, export_description_locked (h));
}

/* --- registration ------------------------------------------------------ */

static const char *
opt_string (value s)
{
  return caml_string_length (s) == 0 ? NULL : strdup (String_val (s));
}

/* NBDKit.register_plugin: [| name; longname; version; description;
 * config_help; magic_config_key |] and the names of the callbacks given
 * (each registered as "nbdkit.NAME").
 */
value
nbdkit_ocaml_register (value strings, value present)
{
  CAMLparam2 (strings, present);
  CAMLlocal1 (l);
  char full[64];
  int i;

  for (l = present; l != Val_emptylist; l = Field (l, 1)) {
    for (i = 0; i < CB_MAX; i++) {
      if (strcmp (String_val (Field (l, 0)), cb_names[i]) == 0) {
        snprintf (full, sizeof full, "nbdkit.%s", cb_names[i]);
        cb[i] = caml_named_value (full);
      }
    }
  }

  memset (&plugin, 0, sizeof plugin);
  plugin._struct_size = sizeof plugin;
  plugin._api_version = NBDKIT_API_VERSION;
  /* The plugin's own model comes from .thread_model. */
  plugin._thread_model = NBDKIT_THREAD_MODEL_PARALLEL;
  plugin.name = strdup (String_val (Field (strings, 0)));
  plugin.longname = opt_string (Field (strings, 1));
  plugin.version = opt_string (Field (strings, 2));
  plugin.description = opt_string (Field (strings, 3));
  plugin.config_help = opt_string (Field (strings, 4));
  plugin.magic_config_key = opt_string (Field (strings, 5));
  /* OCaml code may run between a failing system call and the return. */
  plugin.errno_is_preserved = 0;

  /* Always: open, close (which frees the handle), get_size, pread. */
  plugin.open = w_open;
  plugin.close = w_close;
  plugin.get_size = w_get_size;
  plugin.pread = w_pread;
#define SET(which, field, fn) if (cb[which]) plugin.field = fn
  SET (CB_LOAD, load, w_load);
  SET (CB_UNLOAD, unload, w_unload);
  SET (CB_GET_READY, get_ready, w_get_ready);
  SET (CB_AFTER_FORK, after_fork, w_after_fork);
  SET (CB_CLEANUP, cleanup, w_cleanup);
  SET (CB_CONFIG, config, w_config);
  SET (CB_CONFIG_COMPLETE, config_complete, w_config_complete);
  SET (CB_THREAD_MODEL, thread_model, w_thread_model);
  SET (CB_PRECONNECT, preconnect, w_preconnect);
  SET (CB_BLOCK_SIZE, block_size, w_block_size);
  SET (CB_CAN_CACHE, can_cache, w_can_cache);
  SET (CB_CAN_EXTENTS, can_extents, w_can_extents);
  SET (CB_CAN_FAST_ZERO, can_fast_zero, w_can_fast_zero);
  SET (CB_CAN_FLUSH, can_flush, w_can_flush);
  SET (CB_CAN_FUA, can_fua, w_can_fua);
  SET (CB_CAN_MULTI_CONN, can_multi_conn, w_can_multi_conn);
  SET (CB_CAN_TRIM, can_trim, w_can_trim);
  SET (CB_CAN_WRITE, can_write, w_can_write);
  SET (CB_CAN_ZERO, can_zero, w_can_zero);
  SET (CB_IS_ROTATIONAL, is_rotational, w_is_rotational);
  SET (CB_PWRITE, pwrite, w_pwrite);
  SET (CB_FLUSH, flush, w_flush);
  SET (CB_TRIM, trim, w_trim);
  SET (CB_ZERO, zero, w_zero);
  SET (CB_EXTENTS, extents, w_extents);
  SET (CB_CACHE, cache, w_cache);
  SET (CB_DUMP_PLUGIN, dump_plugin, w_dump_plugin);
  SET (CB_LIST_EXPORTS, list_exports, w_list_exports);
  SET (CB_DEFAULT_EXPORT, default_export, w_default_export);
  SET (CB_EXPORT_DESCRIPTION, export_description, w_export_description);
#undef SET
  registered = 1;
  CAMLreturn (Val_unit);
}

/* The runtime starts when the shared object is loaded: the plugin's
 * module initialisation registers it before the server asks.
 */
__attribute__ ((constructor))
static void
nbdkit_ocaml_start (void)
{
  static char *argv[] = { (char *) "nbdkit", NULL };
  value r;

  pthread_mutex_lock (&lock);
  r = caml_startup_exn (argv);
  if (Is_exception_result (r)) {
    char *msg = caml_format_exception (Extract_exception (r));
    nbdkit_error ("ocaml: the plugin's initialisation raised %s", msg);
    caml_stat_free (msg);
    registered = 0;
  }
  pthread_mutex_unlock (&lock);
}

struct nbdkit_plugin *
plugin_init (void)
{
  if (!registered)
    return NULL;
  return &plugin;
}

/* --- functions for OCaml ----------------------------------------------- */

value
nbdkit_ocaml_debug (value s)
{
  nbdkit_debug ("%s", String_val (s));
  return Val_unit;
}

value
nbdkit_ocaml_set_error (value e)
{
  nbdkit_set_error (Int_val (e));
  return Val_unit;
}

value
nbdkit_ocaml_parse_size (value s)
{
  CAMLparam1 (s);
  int64_t r = nbdkit_parse_size (String_val (s));
  if (r == -1)
    caml_invalid_argument ("NBDKit.parse_size");
  CAMLreturn (caml_copy_int64 (r));
}

value
nbdkit_ocaml_parse_bool (value s)
{
  int r = nbdkit_parse_bool (String_val (s));
  if (r == -1)
    caml_invalid_argument ("NBDKit.parse_bool");
  return Val_bool (r);
}

value
nbdkit_ocaml_parse_probability (value what, value s)
{
  CAMLparam2 (what, s);
  double d;
  if (nbdkit_parse_probability (String_val (what), String_val (s), &d) == -1)
    caml_invalid_argument ("NBDKit.parse_probability");
  CAMLreturn (caml_copy_double (d));
}

value
nbdkit_ocaml_read_password (value s)
{
  CAMLparam1 (s);
  CAMLlocal1 (r);
  char *p;
  if (nbdkit_read_password (String_val (s), &p) == -1)
    caml_invalid_argument ("NBDKit.read_password");
  r = caml_copy_string (p);
  free (p);
  CAMLreturn (r);
}

value
nbdkit_ocaml_realpath (value s)
{
  CAMLparam1 (s);
  CAMLlocal1 (r);
  char *p = nbdkit_realpath (String_val (s));
  if (p == NULL)
    caml_invalid_argument ("NBDKit.realpath");
  r = caml_copy_string (p);
  free (p);
  CAMLreturn (r);
}

value
nbdkit_ocaml_stdio_safe (value unit)
{
  return Val_bool (nbdkit_stdio_safe ());
}

value
nbdkit_ocaml_nanosleep (value sec, value nsec)
{
  if (nbdkit_nanosleep (Int_val (sec), Int_val (nsec)) == -1)
    caml_failwith ("NBDKit.nanosleep");
  return Val_unit;
}

value
nbdkit_ocaml_export_name (value unit)
{
  const char *n = nbdkit_export_name ();
  if (n == NULL)
    caml_invalid_argument ("NBDKit.export_name");
  return caml_copy_string (n);
}

value
nbdkit_ocaml_is_tls (value unit)
{
  int r = nbdkit_is_tls ();
  if (r == -1)
    caml_invalid_argument ("NBDKit.is_tls");
  return Val_bool (r);
}

value
nbdkit_ocaml_shutdown (value unit)
{
  nbdkit_shutdown ();
  return Val_unit;
}

static value
peer (int64_t r, const char *what)
{
  if (r == -1)
    caml_invalid_argument (what);
  return caml_copy_int64 (r);
}

value nbdkit_ocaml_peer_pid (value u) { return peer (nbdkit_peer_pid (), "NBDKit.peer_pid"); }
value nbdkit_ocaml_peer_uid (value u) { return peer (nbdkit_peer_uid (), "NBDKit.peer_uid"); }
value nbdkit_ocaml_peer_gid (value u) { return peer (nbdkit_peer_gid (), "NBDKit.peer_gid"); }

value
nbdkit_ocaml_version (value unit)
{
  return caml_copy_string (NBDKIT_VERSION_STRING);
}
