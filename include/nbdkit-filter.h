/* nbdkit-rs: the filter ABI.  A filter is a shared object that defines
 * `filter_init' (use NBDKIT_REGISTER_FILTER), returning a struct
 * nbdkit_filter.  Unlike the plugin ABI this one is tied to the server's
 * version: a filter only loads into the version it was built for
 * (NBDKIT_VERSION_STRING).  Written for the nbdkit-rs project
 * (BSD-3-Clause); binary compatible with nbdkit 1.36's filter API 6.  See
 * nbdkit-filter(3).
 */

#ifndef NBDKIT_FILTER_H
#define NBDKIT_FILTER_H

#include <stdlib.h>

#include <nbdkit-common.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NBDKIT_FILTER_API_VERSION 6

/* Answers of a filter's .can_zero. */
#define NBDKIT_ZERO_NONE     0
#define NBDKIT_ZERO_EMULATE  1
#define NBDKIT_ZERO_NATIVE   2

/* Opaque server objects. */
typedef struct nbdkit_backend nbdkit_backend;   /* a layer of the stack */
typedef struct nbdkit_context nbdkit_context;   /* a filter's open */
typedef struct nbdkit_next_ops nbdkit_next;     /* the open layer below */

/* The server's continuations for the global callbacks. */
typedef int nbdkit_next_config (nbdkit_backend *nxdata,
                                const char *key, const char *value);
typedef int nbdkit_next_config_complete (nbdkit_backend *nxdata);
typedef int nbdkit_next_preconnect (nbdkit_backend *nxdata, int readonly);
typedef int nbdkit_next_list_exports (nbdkit_backend *nxdata, int readonly,
                                      struct nbdkit_exports *exports);
typedef const char *nbdkit_next_default_export (nbdkit_backend *nxdata,
                                                int readonly);
typedef int nbdkit_next_open (nbdkit_context *context,
                              int readonly, const char *exportname);

/* How a filter calls the layer below: next->pread (next, ...).  The
 * server's objects are larger than this table: only use pointers it gave.
 */
struct nbdkit_next_ops {
  int (*prepare) (nbdkit_next *next);
  int (*finalize) (nbdkit_next *next);

  int64_t (*get_size) (nbdkit_next *next);
  const char *(*export_description) (nbdkit_next *next);
  int (*block_size) (nbdkit_next *next, uint32_t *minimum,
                     uint32_t *preferred, uint32_t *maximum);

  int (*can_write) (nbdkit_next *next);
  int (*can_flush) (nbdkit_next *next);
  int (*is_rotational) (nbdkit_next *next);
  int (*can_trim) (nbdkit_next *next);
  int (*can_zero) (nbdkit_next *next);
  int (*can_fast_zero) (nbdkit_next *next);
  int (*can_extents) (nbdkit_next *next);
  int (*can_fua) (nbdkit_next *next);
  int (*can_multi_conn) (nbdkit_next *next);
  int (*can_cache) (nbdkit_next *next);

  int (*pread) (nbdkit_next *next, void *buf, uint32_t count,
                uint64_t offset, uint32_t flags, int *err);
  int (*pwrite) (nbdkit_next *next, const void *buf, uint32_t count,
                 uint64_t offset, uint32_t flags, int *err);
  int (*flush) (nbdkit_next *next, uint32_t flags, int *err);
  int (*trim) (nbdkit_next *next, uint32_t count, uint64_t offset,
               uint32_t flags, int *err);
  int (*zero) (nbdkit_next *next, uint32_t count, uint64_t offset,
               uint32_t flags, int *err);
  int (*extents) (nbdkit_next *next, uint32_t count, uint64_t offset,
                  uint32_t flags, struct nbdkit_extents *extents, int *err);
  int (*cache) (nbdkit_next *next, uint32_t count, uint64_t offset,
                uint32_t flags, int *err);
};

/* Extent lists. */
struct nbdkit_extent {
  uint64_t offset;
  uint64_t length;
  uint32_t type;
};

extern struct nbdkit_extents *nbdkit_extents_new (uint64_t start,
                                                  uint64_t end);
extern void nbdkit_extents_free (struct nbdkit_extents *extents);
extern size_t nbdkit_extents_count (const struct nbdkit_extents *extents);
extern struct nbdkit_extent nbdkit_get_extent
  (const struct nbdkit_extents *extents, size_t i);
extern struct nbdkit_extents *nbdkit_extents_full
  (nbdkit_next *next, uint32_t count, uint64_t offset, uint32_t flags,
   int *err);
extern int nbdkit_extents_aligned (nbdkit_next *next, uint32_t count,
                                   uint64_t offset, uint32_t flags,
                                   uint32_t align,
                                   struct nbdkit_extents *extents, int *err);

/* Export lists. */
struct nbdkit_export {
  char *name;
  char *description;
};

extern struct nbdkit_exports *nbdkit_exports_new (void);
extern void nbdkit_exports_free (struct nbdkit_exports *exports);
extern size_t nbdkit_exports_count (const struct nbdkit_exports *exports);
extern const struct nbdkit_export nbdkit_get_export
  (const struct nbdkit_exports *exports, size_t i);

/* Opening contexts of the layer below by hand. */
extern nbdkit_backend *nbdkit_context_get_backend (nbdkit_context *context);
extern nbdkit_next *nbdkit_next_context_open (nbdkit_backend *backend,
                                              int readonly,
                                              const char *exportname,
                                              int shared);
extern void nbdkit_next_context_close (nbdkit_next *next);
extern nbdkit_next *nbdkit_context_set_next (nbdkit_context *context,
                                             nbdkit_next *next);

struct nbdkit_filter {
  /* Set by NBDKIT_REGISTER_FILTER; checked by the server. */
  int _api_version;
  const char *_version;

  const char *name;             /* required */
  const char *longname;
  const char *description;

  void (*load) (void);
  void (*unload) (void);

  int (*config) (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value);
  int (*config_complete) (nbdkit_next_config_complete *next,
                          nbdkit_backend *nxdata);
  const char *config_help;
  int (*thread_model) (void);
  int (*get_ready) (int thread_model);
  int (*after_fork) (nbdkit_backend *backend);
  void (*cleanup) (nbdkit_backend *backend);
  int (*preconnect) (nbdkit_next_preconnect *next, nbdkit_backend *nxdata,
                     int readonly);
  int (*list_exports) (nbdkit_next_list_exports *next,
                       nbdkit_backend *nxdata, int readonly, int is_tls,
                       struct nbdkit_exports *exports);
  const char *(*default_export) (nbdkit_next_default_export *next,
                                 nbdkit_backend *nxdata, int readonly,
                                 int is_tls);

  void *(*open) (nbdkit_next_open *next, nbdkit_context *context,
                 int readonly, const char *exportname, int is_tls);
  void (*close) (void *handle);

  int (*prepare) (nbdkit_next *next, void *handle, int readonly);
  int (*finalize) (nbdkit_next *next, void *handle);

  int64_t (*get_size) (nbdkit_next *next, void *handle);
  const char *(*export_description) (nbdkit_next *next, void *handle);
  int (*block_size) (nbdkit_next *next, void *handle, uint32_t *minimum,
                     uint32_t *preferred, uint32_t *maximum);

  int (*can_write) (nbdkit_next *next, void *handle);
  int (*can_flush) (nbdkit_next *next, void *handle);
  int (*is_rotational) (nbdkit_next *next, void *handle);
  int (*can_trim) (nbdkit_next *next, void *handle);
  int (*can_zero) (nbdkit_next *next, void *handle);
  int (*can_fast_zero) (nbdkit_next *next, void *handle);
  int (*can_extents) (nbdkit_next *next, void *handle);
  int (*can_fua) (nbdkit_next *next, void *handle);
  int (*can_multi_conn) (nbdkit_next *next, void *handle);
  int (*can_cache) (nbdkit_next *next, void *handle);

  int (*pread) (nbdkit_next *next, void *handle, void *buf, uint32_t count,
                uint64_t offset, uint32_t flags, int *err);
  int (*pwrite) (nbdkit_next *next, void *handle, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags, int *err);
  int (*flush) (nbdkit_next *next, void *handle, uint32_t flags, int *err);
  int (*trim) (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err);
  int (*zero) (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err);
  int (*extents) (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags,
                  struct nbdkit_extents *extents, int *err);
  int (*cache) (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags, int *err);
};

#define NBDKIT_REGISTER_FILTER(filter)                          \
  NBDKIT_CXX_LANG_C NBDKIT_DLL_PUBLIC                           \
  struct nbdkit_filter *                                        \
  filter_init (void)                                            \
  {                                                             \
    (filter)._api_version = NBDKIT_FILTER_API_VERSION;          \
    (filter)._version = NBDKIT_VERSION_STRING;                  \
    return &(filter);                                           \
  }

#ifdef __cplusplus
}
#endif

#endif /* NBDKIT_FILTER_H */
