/* See shim.h. Each callback turns the void * handle into the integer
 * (a runtime/cgo.Handle) that the Go side uses.
 */
#include <stdint.h>
#include <string.h>

#include "shim.h"
#include "_cgo_export.h"

static void w_load (void) { goLoad (); }
static void w_unload (void) { goUnload (); }
static void w_dump_plugin (void) { goDumpPlugin (); }

static int
w_config (const char *key, const char *value)
{
  return goConfig ((char *) key, (char *) value);
}

static int w_config_complete (void) { return goConfigComplete (); }
static int w_get_ready (void) { return goGetReady (); }
static int w_preconnect (int readonly) { return goPreConnect (readonly); }

static void *
w_open (int readonly)
{
  /* 0 means failure; a cgo.Handle is never 0. */
  return (void *) goOpen (readonly);
}

static void w_close (void *h) { goClose ((uintptr_t) h); }
static int64_t w_get_size (void *h) { return goGetSize ((uintptr_t) h); }
static int w_can_write (void *h) { return goCanWrite ((uintptr_t) h); }
static int w_can_flush (void *h) { return goCanFlush ((uintptr_t) h); }
static int w_is_rotational (void *h) { return goIsRotational ((uintptr_t) h); }
static int w_can_trim (void *h) { return goCanTrim ((uintptr_t) h); }
static int w_can_zero (void *h) { return goCanZero ((uintptr_t) h); }
static int w_can_multi_conn (void *h) { return goCanMultiConn ((uintptr_t) h); }

static int
w_pread (void *h, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  return goPRead ((uintptr_t) h, buf, count, offset, flags);
}

static int
w_pwrite (void *h, const void *buf, uint32_t count, uint64_t offset,
          uint32_t flags)
{
  return goPWrite ((uintptr_t) h, (void *) buf, count, offset, flags);
}

static int w_flush (void *h, uint32_t flags) { return goFlush ((uintptr_t) h, flags); }

static int
w_trim (void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
  return goTrim ((uintptr_t) h, count, offset, flags);
}

static int
w_zero (void *h, uint32_t count, uint64_t offset, uint32_t flags)
{
  return goZero ((uintptr_t) h, count, offset, flags);
}

struct nbdkit_plugin *
nbdkit_go_plugin (char *name)
{
  /* One plugin per shared object; the server keeps the pointer. */
  static struct nbdkit_plugin p;

  memset (&p, 0, sizeof p);
  p._struct_size = sizeof p;
  p._api_version = NBDKIT_API_VERSION;
  p._thread_model = NBDKIT_THREAD_MODEL_PARALLEL;
  p.name = name;
  p.load = w_load;
  p.unload = w_unload;
  p.dump_plugin = w_dump_plugin;
  p.config = w_config;
  p.config_complete = w_config_complete;
  p.get_ready = w_get_ready;
  p.preconnect = w_preconnect;
  p.open = w_open;
  p.close = w_close;
  p.get_size = w_get_size;
  p.can_write = w_can_write;
  p.can_flush = w_can_flush;
  p.is_rotational = w_is_rotational;
  p.can_trim = w_can_trim;
  p.can_zero = w_can_zero;
  p.can_multi_conn = w_can_multi_conn;
  p.pread = w_pread;
  p.pwrite = w_pwrite;
  p.flush = w_flush;
  p.trim = w_trim;
  p.zero = w_zero;
  /* The Go runtime may run other code on the thread between a failing
   * system call and the return to the server: errno is not reliable.
   */
  p.errno_is_preserved = 0;
  return &p;
}

void
nbdkit_go_debug (const char *msg)
{
  nbdkit_debug ("%s", msg);
}

void
nbdkit_go_error (const char *msg)
{
  nbdkit_error ("%s", msg);
}
