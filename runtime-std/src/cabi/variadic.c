/* The variadic and va_list functions of the nbdkit plugin ABI.  Stable
 * Rust cannot define C variadic functions, so these format the message
 * with the C library (which also knows %m) and hand the finished string
 * to the Rust side of the ABI (runtime-std/src/cabi/api.rs).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* Implemented in Rust. */
extern void cabi_rs_error (const char *msg);
extern void cabi_rs_debug (const char *msg);
extern int cabi_rs_verbose (void);
extern const char *nbdkit_strdup_intern (const char *str);

/* vasprintf, or NULL when out of memory. */
static char *
format (const char *fs, va_list args)
{
  char *s = NULL;
  if (vasprintf (&s, fs, args) < 0)
    return NULL;
  return s;
}

void
nbdkit_verror (const char *fs, va_list args)
{
  int saved_errno = errno;
  char *s = format (fs, args);
  cabi_rs_error (s ? s : fs);
  free (s);
  errno = saved_errno;
}

void
nbdkit_error (const char *fs, ...)
{
  va_list args;
  va_start (args, fs);
  nbdkit_verror (fs, args);
  va_end (args);
}

void
nbdkit_vdebug (const char *fs, va_list args)
{
  int saved_errno = errno;
  if (cabi_rs_verbose ()) {
    char *s = format (fs, args);
    cabi_rs_debug (s ? s : fs);
    free (s);
  }
  errno = saved_errno;
}

void
nbdkit_debug (const char *fs, ...)
{
  va_list args;
  va_start (args, fs);
  nbdkit_vdebug (fs, args);
  va_end (args);
}

const char *
nbdkit_vprintf_intern (const char *fs, va_list args)
{
  const char *r;
  char *s = format (fs, args);
  if (s == NULL) {
    nbdkit_error ("nbdkit_printf_intern: vasprintf: %m");
    return NULL;
  }
  r = nbdkit_strdup_intern (s);
  free (s);
  return r;
}

const char *
nbdkit_printf_intern (const char *fs, ...)
{
  va_list args;
  const char *r;
  va_start (args, fs);
  r = nbdkit_vprintf_intern (fs, args);
  va_end (args);
  return r;
}
