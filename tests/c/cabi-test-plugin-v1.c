/* A test plugin for the nbdkit C ABI, API version 1: the flagless data
 * callbacks, and errno_is_preserved (a failed write reports errno).
 */
#include <nbdkit-plugin.h>

#include <stdlib.h>
#include <string.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS

static char disk[65536];

static void *v1_open (int readonly) { return NBDKIT_HANDLE_NOT_NEEDED; }
static int64_t v1_get_size (void *h) { return sizeof disk; }

static int
v1_pread (void *h, void *buf, uint32_t count, uint64_t offset)
{
  memcpy (buf, disk + offset, count);
  return 0;
}

static int
v1_pwrite (void *h, const void *buf, uint32_t count, uint64_t offset)
{
  if (offset == 4096) {
    errno = ENOSPC;             /* reported because errno_is_preserved */
    return -1;
  }
  memcpy (disk + offset, buf, count);
  return 0;
}

static int v1_flush (void *h) { return 0; }

static int
v1_trim (void *h, uint32_t count, uint64_t offset)
{
  memset (disk + offset, 0, count);
  return 0;
}

static int
v1_zero (void *h, uint32_t count, uint64_t offset, int may_trim)
{
  memset (disk + offset, 0, count);
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name = "testv1",
  .version = "1.0",
  .open = v1_open,
  .get_size = v1_get_size,
  .pread = v1_pread,
  .pwrite = v1_pwrite,
  .flush = v1_flush,
  .trim = v1_trim,
  .zero = v1_zero,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)
