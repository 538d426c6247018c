/* nbdkit-rs: declarations shared by plugins and filters: constants and the
 * nbdkit_* functions that the nbdkit executable provides.  Written for the
 * nbdkit-rs project (BSD-3-Clause); binary compatible with nbdkit 1.36.
 * See nbdkit-plugin(3) for what each function does.
 */

#ifndef NBDKIT_COMMON_H
#define NBDKIT_COMMON_H

#if !defined (NBDKIT_PLUGIN_H) && !defined (NBDKIT_FILTER_H)
#error "include <nbdkit-plugin.h> or <nbdkit-filter.h>, not this file"
#endif

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <nbdkit-version.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined (__GNUC__) || defined (__clang__)
#define NBDKIT_PRINTF_LIKE(fmt, first) \
  __attribute__ ((__format__ (__printf__, fmt, first)))
#define NBDKIT_DLL_PUBLIC __attribute__ ((__visibility__ ("default")))
#else
#define NBDKIT_PRINTF_LIKE(fmt, first)
#define NBDKIT_DLL_PUBLIC
#endif
/* The name nbdkit's own headers use for the same attribute. */
#define ATTRIBUTE_FORMAT_PRINTF(fmt, first) NBDKIT_PRINTF_LIKE (fmt, first)

#define NBDKIT_EXTERN_DECL(ret, fn, args) extern ret fn args

/* Thread models, from most to least restrictive. */
#define NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS  0
#define NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS 1
#define NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS     2
#define NBDKIT_THREAD_MODEL_PARALLEL               3

/* Flags of the data callbacks. */
#define NBDKIT_FLAG_MAY_TRIM  (1 << 0)  /* zero: may punch a hole */
#define NBDKIT_FLAG_FUA       (1 << 1)  /* force unit access */
#define NBDKIT_FLAG_REQ_ONE   (1 << 2)  /* extents: one is enough */
#define NBDKIT_FLAG_FAST_ZERO (1 << 3)  /* zero: fail unless fast */

/* Answers of .can_fua and .can_cache (and a filter's .can_zero). */
#define NBDKIT_FUA_NONE       0
#define NBDKIT_FUA_EMULATE    1
#define NBDKIT_FUA_NATIVE     2
#define NBDKIT_CACHE_NONE     0
#define NBDKIT_CACHE_EMULATE  1
#define NBDKIT_CACHE_NATIVE   2

/* Extent types (the NBD base:allocation bits). */
#define NBDKIT_EXTENT_HOLE    (1 << 0)
#define NBDKIT_EXTENT_ZERO    (1 << 1)

/* Messages. */
extern void nbdkit_error (const char *fs, ...) NBDKIT_PRINTF_LIKE (1, 2);
extern void nbdkit_verror (const char *fs, va_list args)
  NBDKIT_PRINTF_LIKE (1, 0);
extern void nbdkit_debug (const char *fs, ...) NBDKIT_PRINTF_LIKE (1, 2);
extern void nbdkit_vdebug (const char *fs, va_list args)
  NBDKIT_PRINTF_LIKE (1, 0);

/* Parameters. */
extern char *nbdkit_absolute_path (const char *path);
extern char *nbdkit_realpath (const char *path);
extern int64_t nbdkit_parse_size (const char *str);
extern int nbdkit_parse_bool (const char *str);
extern int nbdkit_parse_probability (const char *what, const char *str,
                                     double *r);
extern int nbdkit_parse_int (const char *what, const char *str, int *r);
extern int nbdkit_parse_unsigned (const char *what, const char *str,
                                  unsigned *r);
extern int nbdkit_parse_int8_t (const char *what, const char *str,
                                int8_t *r);
extern int nbdkit_parse_uint8_t (const char *what, const char *str,
                                 uint8_t *r);
extern int nbdkit_parse_int16_t (const char *what, const char *str,
                                 int16_t *r);
extern int nbdkit_parse_uint16_t (const char *what, const char *str,
                                  uint16_t *r);
extern int nbdkit_parse_int32_t (const char *what, const char *str,
                                 int32_t *r);
extern int nbdkit_parse_uint32_t (const char *what, const char *str,
                                  uint32_t *r);
extern int nbdkit_parse_int64_t (const char *what, const char *str,
                                 int64_t *r);
extern int nbdkit_parse_uint64_t (const char *what, const char *str,
                                  uint64_t *r);
extern int nbdkit_read_password (const char *value, char **password);
extern int nbdkit_stdio_safe (void);

/* Server and connection. */
extern int nbdkit_nanosleep (unsigned sec, unsigned nsec);
extern int nbdkit_peer_name (struct sockaddr *addr, socklen_t *addrlen);
extern int64_t nbdkit_peer_pid (void);
extern int64_t nbdkit_peer_uid (void);
extern int64_t nbdkit_peer_gid (void);
extern char *nbdkit_peer_security_context (void);
extern void nbdkit_shutdown (void);
extern void nbdkit_disconnect (int force);

/* Strings freed by the server when the connection (or, outside one, the
 * server) ends.
 */
extern const char *nbdkit_strdup_intern (const char *str);
extern const char *nbdkit_strndup_intern (const char *str, size_t n);
extern const char *nbdkit_printf_intern (const char *fs, ...)
  NBDKIT_PRINTF_LIKE (1, 2);
extern const char *nbdkit_vprintf_intern (const char *fs, va_list args)
  NBDKIT_PRINTF_LIKE (1, 0);

/* Lists the server owns, filled by .extents and .list_exports. */
struct nbdkit_extents;
extern int nbdkit_add_extent (struct nbdkit_extents *extents,
                              uint64_t offset, uint64_t length,
                              uint32_t type);
struct nbdkit_exports;
extern int nbdkit_add_export (struct nbdkit_exports *exports,
                              const char *name, const char *description);
extern int nbdkit_use_default_export (struct nbdkit_exports *exports);

/* A non-NULL handle for plugins that need no per-connection state. */
#define NBDKIT_HANDLE_NOT_NEEDED (&errno)

#ifdef __cplusplus
}
#define NBDKIT_CXX_LANG_C extern "C"
#else
#define NBDKIT_CXX_LANG_C
#endif

#endif /* NBDKIT_COMMON_H */
