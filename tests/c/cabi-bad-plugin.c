/* Plugins nbdkit refuses to load, one per -DBAD_... choice, for the error
 * tests of the nbdkit C ABI loader.
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <stddef.h>
#include <string.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

__attribute__ ((unused)) static void *b_open (int readonly) { return NBDKIT_HANDLE_NOT_NEEDED; }
__attribute__ ((unused)) static int64_t b_get_size (void *h) { return 512; }
__attribute__ ((unused)) static int
b_pread (void *h, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  memset (buf, 0, count);
  return 0;
}

__attribute__ ((unused)) static struct nbdkit_plugin plugin = {
#ifdef BAD_NAME
  .name = "bad name!",
#elif !defined (BAD_NO_NAME)
  .name = "bad",
#endif
#ifndef BAD_NO_OPEN
  .open = b_open,
#endif
#ifndef BAD_NO_GET_SIZE
  .get_size = b_get_size,
#endif
#ifndef BAD_NO_PREAD
  .pread = b_pread,
#endif
};

#if defined (BAD_NULL_INIT)
NBDKIT_CXX_LANG_C NBDKIT_DLL_PUBLIC struct nbdkit_plugin *
plugin_init (void)
{
  return NULL;
}
#elif defined (BAD_API_VERSION)
NBDKIT_CXX_LANG_C NBDKIT_DLL_PUBLIC struct nbdkit_plugin *
plugin_init (void)
{
  plugin._struct_size = sizeof plugin;
  plugin._api_version = 3;
  plugin._thread_model = THREAD_MODEL;
  return &plugin;
}
#elif defined (BAD_STRUCT_SIZE)
NBDKIT_CXX_LANG_C NBDKIT_DLL_PUBLIC struct nbdkit_plugin *
plugin_init (void)
{
  /* Too short to hold even .name: as if built for no known version. */
  plugin._struct_size = 8;
  plugin._api_version = NBDKIT_API_VERSION;
  plugin._thread_model = THREAD_MODEL;
  return &plugin;
}
#elif !defined (BAD_NO_INIT)
NBDKIT_REGISTER_PLUGIN (plugin)
#endif
