/* A test filter for the nbdkit C ABI, with every callback: it XORs the
 * data with xor=N (default 0xff) on the way in and out, adds an export to
 * the list, and prefixes the description.  With manual=1 it opens the
 * layer below with nbdkit_next_context_open + nbdkit_context_set_next
 * instead of next_open.
 */
#include <nbdkit-filter.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static uint8_t key = 0xff;
static int manual;

static int
xf_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
           const char *k, const char *v)
{
  if (strcmp (k, "xor") == 0)
    return nbdkit_parse_uint8_t ("xor", v, &key);
  if (strcmp (k, "manual") == 0) {
    manual = nbdkit_parse_bool (v);
    return manual == -1 ? -1 : 0;
  }
  return next (nxdata, k, v);
}

static int
xf_config_complete (nbdkit_next_config_complete *next, nbdkit_backend *nxdata)
{
  return next (nxdata);
}

static int xf_thread_model (void) { return NBDKIT_THREAD_MODEL_PARALLEL; }
static int xf_get_ready (int tm) { return 0; }
static int xf_after_fork (nbdkit_backend *b) { return 0; }
static void xf_cleanup (nbdkit_backend *b) { }

static int
xf_preconnect (nbdkit_next_preconnect *next, nbdkit_backend *nxdata, int ro)
{
  return next (nxdata, ro);
}

static int
xf_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                 int ro, int is_tls, struct nbdkit_exports *exports)
{
  struct nbdkit_exports *below = nbdkit_exports_new ();
  size_t i;
  if (!below) return -1;
  if (next (nxdata, ro, below) == -1) { nbdkit_exports_free (below); return -1; }
  for (i = 0; i < nbdkit_exports_count (below); i++) {
    struct nbdkit_export e = nbdkit_get_export (below, i);
    if (nbdkit_add_export (exports, e.name, e.description) == -1) {
      nbdkit_exports_free (below);
      return -1;
    }
  }
  nbdkit_exports_free (below);
  return nbdkit_add_export (exports, "xor-extra", "added by the filter");
}

static const char *
xf_default_export (nbdkit_next_default_export *next, nbdkit_backend *nxdata,
                   int ro, int is_tls)
{
  return next (nxdata, ro);
}

struct handle { int prepared; };

static void *
xf_open (nbdkit_next_open *next, nbdkit_context *ctx, int ro,
         const char *exportname, int is_tls)
{
  struct handle *h;
  if (manual) {
    nbdkit_backend *b = nbdkit_context_get_backend (ctx);
    nbdkit_next *n = nbdkit_next_context_open (b, ro, exportname, 0);
    if (!n) return NULL;
    if (nbdkit_context_set_next (ctx, n) != NULL) {
      nbdkit_error ("set_next returned an old context");
      return NULL;
    }
  }
  else if (next (ctx, ro, exportname) == -1)
    return NULL;
  h = calloc (1, sizeof *h);
  return h;
}

static void xf_close (void *h) { free (h); }

static int
xf_prepare (nbdkit_next *next, void *handle, int ro)
{
  struct handle *h = handle;
  h->prepared = next->get_size (next) >= 0;
  return 0;
}

static int
xf_finalize (nbdkit_next *next, void *handle)
{
  return 0;
}

static int64_t xf_get_size (nbdkit_next *next, void *h) { return next->get_size (next); }

static const char *
xf_export_description (nbdkit_next *next, void *h)
{
  const char *d = next->export_description (next);
  return nbdkit_printf_intern ("xor: %s", d ? d : "(none)");
}

static int
xf_block_size (nbdkit_next *next, void *h, uint32_t *a, uint32_t *b, uint32_t *c)
{
  return next->block_size (next, a, b, c);
}

#define PASS(fn) \
  static int xf_##fn (nbdkit_next *next, void *h) { return next->fn (next); }
PASS (can_write)
PASS (can_flush)
PASS (is_rotational)
PASS (can_trim)
PASS (can_zero)
PASS (can_fast_zero)
PASS (can_extents)
PASS (can_fua)
PASS (can_multi_conn)
PASS (can_cache)

static int
xf_pread (nbdkit_next *next, void *h, void *buf, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  uint32_t i;
  if (next->pread (next, buf, count, offset, flags, err) == -1)
    return -1;
  for (i = 0; i < count; i++)
    ((uint8_t *) buf)[i] ^= key;
  return 0;
}

static int
xf_pwrite (nbdkit_next *next, void *h, const void *buf, uint32_t count,
           uint64_t offset, uint32_t flags, int *err)
{
  uint8_t *copy = malloc (count ? count : 1);
  uint32_t i;
  int r;
  if (!copy) { *err = ENOMEM; nbdkit_error ("malloc: %m"); return -1; }
  for (i = 0; i < count; i++)
    copy[i] = ((const uint8_t *) buf)[i] ^ key;
  r = next->pwrite (next, copy, count, offset, flags, err);
  free (copy);
  return r;
}

static int
xf_flush (nbdkit_next *next, void *h, uint32_t flags, int *err)
{
  return next->flush (next, flags, err);
}

static int
xf_trim (nbdkit_next *next, void *h, uint32_t count, uint64_t offset,
         uint32_t flags, int *err)
{
  return next->trim (next, count, offset, flags, err);
}

/* Zeroes below read back as 'key' through the filter: write them. */
static int
xf_zero (nbdkit_next *next, void *h, uint32_t count, uint64_t offset,
         uint32_t flags, int *err)
{
  uint8_t *buf;
  int r;
  if (flags & NBDKIT_FLAG_FAST_ZERO) { *err = ENOTSUP; return -1; }
  buf = malloc (count ? count : 1);
  if (!buf) { *err = ENOMEM; return -1; }
  memset (buf, key, count);
  r = next->pwrite (next, buf, count, offset, flags & NBDKIT_FLAG_FUA, err);
  free (buf);
  return r;
}

static int
xf_extents (nbdkit_next *next, void *h, uint32_t count, uint64_t offset,
            uint32_t flags, struct nbdkit_extents *extents, int *err)
{
  /* Holes below are not zero above: report everything as data, but ask
   * below all the same, through nbdkit_extents_full.
   */
  struct nbdkit_extents *all = nbdkit_extents_full (next, count, offset, flags, err);
  size_t i;
  if (!all) return -1;
  for (i = 0; i < nbdkit_extents_count (all); i++) {
    struct nbdkit_extent e = nbdkit_get_extent (all, i);
    if (nbdkit_add_extent (extents, e.offset, e.length, 0) == -1) {
      nbdkit_extents_free (all);
      *err = errno;
      return -1;
    }
  }
  nbdkit_extents_free (all);
  return 0;
}

static int
xf_cache (nbdkit_next *next, void *h, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  return next->cache (next, count, offset, flags, err);
}

static struct nbdkit_filter filter = {
  .name = "testfilter",
  .longname = "nbdkit ABI test filter",
  .description = "XORs the data",
  .config = xf_config,
  .config_complete = xf_config_complete,
  .config_help = "xor=<N>  The byte to XOR with.",
  .thread_model = xf_thread_model,
  .get_ready = xf_get_ready,
  .after_fork = xf_after_fork,
  .cleanup = xf_cleanup,
  .preconnect = xf_preconnect,
  .list_exports = xf_list_exports,
  .default_export = xf_default_export,
  .open = xf_open,
  .close = xf_close,
  .prepare = xf_prepare,
  .finalize = xf_finalize,
  .get_size = xf_get_size,
  .export_description = xf_export_description,
  .block_size = xf_block_size,
  .can_write = xf_can_write,
  .can_flush = xf_can_flush,
  .is_rotational = xf_is_rotational,
  .can_trim = xf_can_trim,
  .can_zero = xf_can_zero,
  .can_fast_zero = xf_can_fast_zero,
  .can_extents = xf_can_extents,
  .can_fua = xf_can_fua,
  .can_multi_conn = xf_can_multi_conn,
  .can_cache = xf_can_cache,
  .pread = xf_pread,
  .pwrite = xf_pwrite,
  .flush = xf_flush,
  .trim = xf_trim,
  .zero = xf_zero,
  .extents = xf_extents,
  .cache = xf_cache,
};

NBDKIT_REGISTER_FILTER (filter)
