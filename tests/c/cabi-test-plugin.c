/* A test plugin for the nbdkit C ABI (API 2), with every callback: a RAM
 * disk that logs each call it gets to the file named by log=, and reports
 * what the server's nbdkit_* functions answer.
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

int testplugin_debug_level = 0;

static char *disk;
static int64_t size = 1048576;
static const char *logfile;
static int64_t error_offset = -1;

static void
logf_ (const char *fs, ...)
{
  va_list args;
  FILE *f;
  if (!logfile)
    return;
  f = fopen (logfile, "a");
  if (!f)
    return;
  va_start (args, fs);
  vfprintf (f, fs, args);
  va_end (args);
  fputc ('\n', f);
  fclose (f);
}

static void tp_load (void) { }
static void tp_unload (void) { logf_ ("unload"); free (disk); }

static int
tp_config (const char *key, const char *value)
{
  if (strcmp (key, "size") == 0) {
    size = nbdkit_parse_size (value);
    return size == -1 ? -1 : 0;
  }
  if (strcmp (key, "log") == 0) {
    logfile = nbdkit_strdup_intern (value);
    return 0;
  }
  if (strcmp (key, "error_offset") == 0)
    return nbdkit_parse_int64_t ("error_offset", value, &error_offset);
  if (strcmp (key, "fail") == 0) {
    nbdkit_error ("config: asked to fail with %s", value);
    return -1;
  }
  nbdkit_error ("unknown parameter '%s'", key);
  return -1;
}

static int
tp_config_complete (void)
{
  int i; unsigned u; uint8_t u8; int64_t i64; double p; char *pw;
  const char *s;
  char *a;
  logf_ ("config_complete");
  logf_ ("parse_size=%lld", (long long) nbdkit_parse_size ("2k"));
  logf_ ("parse_bool=%d", nbdkit_parse_bool ("on"));
  if (nbdkit_parse_int ("i", "-0x10", &i) == 0) logf_ ("parse_int=%d", i);
  if (nbdkit_parse_unsigned ("u", "010", &u) == 0) logf_ ("parse_unsigned=%u", u);
  logf_ ("parse_uint8_t_bad=%d", nbdkit_parse_uint8_t ("u8", "256", &u8));
  if (nbdkit_parse_int64_t ("i64", "-5", &i64) == 0) logf_ ("parse_int64_t=%lld", (long long) i64);
#if NBDKIT_VERSION_MINOR >= 36
  if (nbdkit_parse_probability ("p", "1:4", &p) == 0) logf_ ("parse_probability=%g", p);
#else
  (void) p;
#endif
  s = nbdkit_printf_intern ("%d-%s", 42, "x");
  logf_ ("printf_intern=%s", s);
  s = nbdkit_strndup_intern ("abcdef", 3);
  logf_ ("strndup_intern=%s", s);
  a = nbdkit_absolute_path ("/abs");
  logf_ ("absolute_path=%s", a);
  free (a);
  a = nbdkit_realpath ("/usr/../usr");
  logf_ ("realpath=%s", a);
  free (a);
  if (nbdkit_read_password ("secret", &pw) == 0) { logf_ ("read_password=%s", pw); free (pw); }
  logf_ ("stdio_safe=%d", nbdkit_stdio_safe ());
  logf_ ("debug_level=%d", testplugin_debug_level);
  disk = calloc (1, size);
  if (!disk) { nbdkit_error ("calloc: %m"); return -1; }
  return 0;
}

static int tp_thread_model (void) { return NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS; }
static int tp_get_ready (void) { logf_ ("get_ready"); return 0; }
static int tp_after_fork (void) { logf_ ("after_fork"); return 0; }
static void tp_cleanup (void) { logf_ ("cleanup"); }
static int tp_preconnect (int readonly) { logf_ ("preconnect ro=%d", readonly); return 0; }

static void
tp_dump_plugin (void)
{
  printf ("testplugin_dump=yes\n");
}

static int
tp_list_exports (int readonly, int is_tls, struct nbdkit_exports *e)
{
  logf_ ("list_exports tls=%d", is_tls);
  if (nbdkit_add_export (e, "", "the default") == -1) return -1;
  return nbdkit_add_export (e, "second", "another export");
}

static const char *
tp_default_export (int readonly, int is_tls)
{
  logf_ ("default_export");
  return nbdkit_strdup_intern ("");
}

struct handle { int readonly; };

static void *
tp_open (int readonly)
{
  struct handle *h;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  const char *name = nbdkit_export_name ();
  logf_ ("open ro=%d export=%s tls=%d", readonly, name ? name : "(null)", nbdkit_is_tls ());
  if (nbdkit_peer_name ((struct sockaddr *) &ss, &len) == 0)
    logf_ ("peer_family=%d", ss.ss_family);
  logf_ ("peer_uid_ok=%d", nbdkit_peer_uid () >= 0);
  if (name && strcmp (name, "refuse") == 0) {
    nbdkit_error ("open: export refuse is refused");
    return NULL;
  }
  h = malloc (sizeof *h);
  if (!h) return NULL;
  h->readonly = readonly;
  nbdkit_debug ("testplugin opened, debug level %d", testplugin_debug_level);
  return h;
}

static void tp_close (void *h) { logf_ ("close"); free (h); }
static int64_t tp_get_size (void *h) { return size; }

static const char *
tp_export_description (void *h)
{
  return nbdkit_printf_intern ("test plugin, export '%s', level %d",
                               nbdkit_export_name (), testplugin_debug_level);
}

static int
tp_block_size (void *h, uint32_t *min, uint32_t *pref, uint32_t *max)
{
  *min = 1; *pref = 4096; *max = 0xffffffff;
  return 0;
}

static int tp_can_write (void *h) { return 1; }
static int tp_can_flush (void *h) { return 1; }
static int tp_is_rotational (void *h) { return 1; }
static int tp_can_trim (void *h) { return 1; }
static int tp_can_zero (void *h) { return 1; }
static int tp_can_fast_zero (void *h) { return 1; }
static int tp_can_extents (void *h) { return 1; }
static int tp_can_fua (void *h) { return NBDKIT_FUA_NATIVE; }
static int tp_can_multi_conn (void *h) { return 1; }
static int tp_can_cache (void *h) { return NBDKIT_CACHE_NATIVE; }

static int
check (uint32_t count, uint64_t offset)
{
  if (error_offset >= 0 && offset <= (uint64_t) error_offset &&
      (uint64_t) error_offset < offset + count) {
    nbdkit_error ("injected error at offset %lld", (long long) error_offset);
    nbdkit_set_error (EPERM);
    return -1;
  }
  return 0;
}

static int
tp_pread (void *h, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  if (check (count, offset) == -1) return -1;
  memcpy (buf, disk + offset, count);
  return 0;
}

static int
tp_pwrite (void *h, const void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  if (check (count, offset) == -1) return -1;
  memcpy (disk + offset, buf, count);
  if (flags & NBDKIT_FLAG_FUA) logf_ ("pwrite fua");
  return 0;
}

static int tp_flush (void *h, uint32_t flags) { logf_ ("flush"); return 0; }

static int
tp_trim (void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
  memset (disk + offset, 0, count);
  logf_ ("trim");
  return 0;
}

static int
tp_zero (void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
  if (check (count, offset) == -1) return -1;
  memset (disk + offset, 0, count);
  logf_ ("zero flags=%u", flags);
  return 0;
}

static int
tp_extents (void *h, uint32_t count, uint64_t offset, uint32_t flags,
            struct nbdkit_extents *e)
{
  /* 4096-byte blocks: all zero = hole, else data. */
  uint64_t blk = offset & ~4095ULL;
  while (blk < offset + count && blk < (uint64_t) size) {
    uint64_t len = 4096, i;
    int zero = 1;
    if (blk + len > (uint64_t) size) len = size - blk;
    for (i = 0; i < len; i++)
      if (disk[blk + i]) { zero = 0; break; }
    if (nbdkit_add_extent (e, blk, len,
                           zero ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO : 0) == -1)
      return -1;
    blk += len;
    if (flags & NBDKIT_FLAG_REQ_ONE) break;
  }
  return 0;
}

static int tp_cache (void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
  logf_ ("cache");
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name = "testplugin",
  .longname = "nbdkit ABI test plugin",
  .version = "1.2.3",
  .description = "A RAM disk with every callback",
  .load = tp_load,
  .unload = tp_unload,
  .config = tp_config,
  .config_complete = tp_config_complete,
  .config_help = "size=<SIZE>  Size of the disk.\nlog=<FILE>   Log calls here.",
  .magic_config_key = "size",
  .thread_model = tp_thread_model,
  .get_ready = tp_get_ready,
  .after_fork = tp_after_fork,
  .cleanup = tp_cleanup,
  .preconnect = tp_preconnect,
  .dump_plugin = tp_dump_plugin,
  .list_exports = tp_list_exports,
  .default_export = tp_default_export,
  .open = tp_open,
  .close = tp_close,
  .get_size = tp_get_size,
  .export_description = tp_export_description,
  .block_size = tp_block_size,
  .can_write = tp_can_write,
  .can_flush = tp_can_flush,
  .is_rotational = tp_is_rotational,
  .can_trim = tp_can_trim,
  .can_zero = tp_can_zero,
  .can_fast_zero = tp_can_fast_zero,
  .can_extents = tp_can_extents,
  .can_fua = tp_can_fua,
  .can_multi_conn = tp_can_multi_conn,
  .can_cache = tp_can_cache,
  .pread = tp_pread,
  .pwrite = tp_pwrite,
  .flush = tp_flush,
  .trim = tp_trim,
  .zero = tp_zero,
  .extents = tp_extents,
  .cache = tp_cache,
  .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN (plugin)
