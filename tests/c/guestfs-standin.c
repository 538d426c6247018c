/* A stand-in for libguestfs.so.0 (tests/tests/plugin_guestfs.rs): the C
 * functions the guestfs plugin calls, over local files instead of an
 * appliance, for machines where libguestfs cannot be installed or its
 * appliance cannot boot.  It is NOT libguestfs: it checks what the plugin
 * asks of the library (drives, flags, mounts, reads and writes).
 *
 * Drive N (in the order added) is /dev/sd('a'+N); a partition name
 * (/dev/sda1) is the whole drive.  Files (export=/PATH) are
 * $GUESTFS_STANDIN_ROOT/PATH once something is mounted.  Every call is
 * logged to $GUESTFS_STANDIN_LOG, one line each.  Reads and writes move
 * at most 64 KiB per call, so that callers must loop.
 * $GUESTFS_STANDIN_LAUNCH_FAIL makes launch fail.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_DRIVES 8
#define MAX_IO 65536

typedef void (*event_cb) (void *g, void *opaque, uint64_t event, int eh,
                          int flags, const char *buf, size_t len,
                          const uint64_t *array, size_t array_len);

typedef struct guestfs_h {
  int nr;
  char *drive[MAX_DRIVES];
  int readonly[MAX_DRIVES];
  int launched, mounted;
  event_cb cb;
  void *opaque;
  char err[512];
  int errnum;
} guestfs_h;

struct add_drive_opts { uint64_t bitmask; int readonly; const char *format; };
struct add_domain_opts {
  uint64_t bitmask; const char *libvirturi; int readonly; const char *iface;
  int live; int allowuuid;
};

static void
logmsg (const char *fs, ...)
{
  const char *p = getenv ("GUESTFS_STANDIN_LOG");
  FILE *f;
  va_list ap;

  if (!p || !(f = fopen (p, "a")))
    return;
  va_start (ap, fs);
  vfprintf (f, fs, ap);
  va_end (ap);
  fputc ('\n', f);
  fclose (f);
}

static int
fail (guestfs_h *g, int errnum, const char *fs, ...)
{
  va_list ap;

  va_start (ap, fs);
  vsnprintf (g->err, sizeof g->err, fs, ap);
  va_end (ap);
  g->errnum = errnum;
  return -1;
}

guestfs_h *
guestfs_create_flags (unsigned flags)
{
  logmsg ("create_flags %u", flags);
  return calloc (1, sizeof (guestfs_h));
}

void
guestfs_close (guestfs_h *g)
{
  int i;

  logmsg ("close");
  for (i = 0; i < g->nr; ++i)
    free (g->drive[i]);
  free (g);
}

void
guestfs_set_error_handler (guestfs_h *g, void *cb, void *data)
{
  logmsg ("set_error_handler %s", cb ? "set" : "NULL");
}

int guestfs_set_trace (guestfs_h *g, int v) { logmsg ("set_trace %d", v); return 0; }
int guestfs_set_verbose (guestfs_h *g, int v) { logmsg ("set_verbose %d", v); return 0; }
int guestfs_parse_environment (guestfs_h *g) { logmsg ("parse_environment"); return 0; }

int
guestfs_set_event_callback (guestfs_h *g, event_cb cb, uint64_t events,
                            int flags, void *opaque)
{
  logmsg ("set_event_callback 0x%llx", (unsigned long long) events);
  g->cb = cb;
  g->opaque = opaque;
  return 0;
}

int
guestfs_add_drive_opts_argv (guestfs_h *g, const char *filename,
                             const struct add_drive_opts *o)
{
  logmsg ("add_drive %s readonly=%d format=%s", filename,
          (o->bitmask & 1) ? o->readonly : -1,
          (o->bitmask & 2) ? o->format : "(auto)");
  if (access (filename, R_OK) == -1)
    return fail (g, errno, "%s: %s", filename, strerror (errno));
  if (g->nr == MAX_DRIVES)
    return fail (g, EINVAL, "too many drives");
  g->readonly[g->nr] = (o->bitmask & 1) && o->readonly;
  g->drive[g->nr++] = strdup (filename);
  return 0;
}

int
guestfs_add_domain_argv (guestfs_h *g, const char *dom,
                         const struct add_domain_opts *o)
{
  logmsg ("add_domain %s uri=%s readonly=%d allowuuid=%d", dom,
          (o->bitmask & 1) ? o->libvirturi : "(default)",
          (o->bitmask & 2) ? o->readonly : -1,
          (o->bitmask & 16) ? o->allowuuid : -1);
  return fail (g, ENOTSUP, "stand-in: no libvirt domains here");
}

int
guestfs_launch (guestfs_h *g)
{
  static const char msg[] = "stand-in appliance is up\n";

  logmsg ("launch");
  if (getenv ("GUESTFS_STANDIN_LAUNCH_FAIL"))
    return fail (g, EIO, "stand-in: cannot boot the appliance");
  if (g->cb)
    g->cb (g, g->opaque, 0x10, 0, 0, msg, sizeof msg - 1, NULL, 0);
  g->launched = 1;
  return 0;
}

int
guestfs_mount_options (guestfs_h *g, const char *options,
                       const char *dev, const char *mp)
{
  logmsg ("mount [%s] %s:%s", options, dev, mp);
  if (strcmp (dev, "/dev/sda1") != 0 && strcmp (dev, "/dev/sda2") != 0)
    return fail (g, ENOENT, "mount_options: %s: No such device", dev);
  g->mounted = 1;
  return 0;
}

static char **
list (const char *a, const char *b, const char *c, const char *d)
{
  char **l = calloc (5, sizeof (char *));
  const char *src[4] = { a, b, c, d };
  int i;

  for (i = 0; i < 4 && src[i]; ++i)
    l[i] = strdup (src[i]);
  return l;
}

char **
guestfs_inspect_os (guestfs_h *g)
{
  logmsg ("inspect_os");
  return list ("/dev/sda1", NULL, NULL, NULL);
}

char **
guestfs_inspect_get_mountpoints (guestfs_h *g, const char *root)
{
  logmsg ("inspect_get_mountpoints %s", root);
  /* Longest first, so that the caller must order them. */
  return list ("/boot", "/dev/sda2", "/", "/dev/sda1");
}

/* The file behind a device name, or -1. */
static int
drive_index (guestfs_h *g, const char *dev)
{
  int i;

  if (strncmp (dev, "/dev/sd", 7) != 0 || !dev[7])
    return -1;
  i = dev[7] - 'a';
  return i >= 0 && i < g->nr ? i : -1;
}

static int
open_device (guestfs_h *g, const char *dev, int flags)
{
  int i = drive_index (g, dev);
  int fd;

  if (!g->launched)
    return fail (g, EINVAL, "call launch before using this function");
  if (i == -1)
    return fail (g, ENOENT, "%s: No such file or directory", dev);
  if ((flags & O_ACCMODE) != O_RDONLY && g->readonly[i])
    return fail (g, EROFS, "%s: Read-only file system", dev);
  fd = open (g->drive[i], flags);
  if (fd == -1)
    return fail (g, errno, "%s: %s", g->drive[i], strerror (errno));
  return fd;
}

static int
open_file (guestfs_h *g, const char *path, int flags)
{
  const char *root = getenv ("GUESTFS_STANDIN_ROOT");
  char buf[4096];
  int fd;

  if (!g->mounted)
    return fail (g, ENOENT, "%s: No such file or directory", path);
  if ((flags & O_ACCMODE) != O_RDONLY && g->nr && g->readonly[0])
    return fail (g, EROFS, "%s: Read-only file system", path);
  snprintf (buf, sizeof buf, "%s%s", root ? root : "", path);
  fd = open (buf, flags);
  if (fd == -1)
    return fail (g, errno, "%s: %s", path, strerror (errno));
  return fd;
}

static int64_t
fd_size (guestfs_h *g, int fd)
{
  struct stat st;
  int64_t r;

  if (fd == -1)
    return -1;
  r = fstat (fd, &st) == 0 ? st.st_size : fail (g, errno, "fstat");
  close (fd);
  return r;
}

int64_t
guestfs_blockdev_getsize64 (guestfs_h *g, const char *dev)
{
  logmsg ("blockdev_getsize64 %s", dev);
  return fd_size (g, open_device (g, dev, O_RDONLY));
}

int64_t
guestfs_filesize (guestfs_h *g, const char *path)
{
  logmsg ("filesize %s", path);
  return fd_size (g, open_file (g, path, O_RDONLY));
}

static char *
do_pread (guestfs_h *g, int fd, int count, int64_t offset, size_t *size_r)
{
  char *buf;
  ssize_t r;

  if (fd == -1)
    return NULL;
  if (count > MAX_IO)
    count = MAX_IO;
  buf = malloc (count ? count : 1);
  r = pread (fd, buf, count, offset);
  close (fd);
  if (r == -1) {
    free (buf);
    fail (g, errno, "pread: %s", strerror (errno));
    return NULL;
  }
  *size_r = r;
  return buf;
}

char *
guestfs_pread_device (guestfs_h *g, const char *dev, int count,
                      int64_t offset, size_t *size_r)
{
  return do_pread (g, open_device (g, dev, O_RDONLY), count, offset, size_r);
}

char *
guestfs_pread (guestfs_h *g, const char *path, int count, int64_t offset,
               size_t *size_r)
{
  return do_pread (g, open_file (g, path, O_RDONLY), count, offset, size_r);
}

static int
do_pwrite (guestfs_h *g, int fd, const char *content, size_t size,
           int64_t offset)
{
  ssize_t r;

  if (fd == -1)
    return -1;
  if (size > MAX_IO)
    size = MAX_IO;
  r = pwrite (fd, content, size, offset);
  close (fd);
  if (r == -1)
    return fail (g, errno, "pwrite: %s", strerror (errno));
  return r;
}

int
guestfs_pwrite_device (guestfs_h *g, const char *dev, const char *content,
                       size_t size, int64_t offset)
{
  return do_pwrite (g, open_device (g, dev, O_WRONLY), content, size, offset);
}

int
guestfs_pwrite (guestfs_h *g, const char *path, const char *content,
                size_t size, int64_t offset)
{
  return do_pwrite (g, open_file (g, path, O_WRONLY), content, size, offset);
}

int guestfs_sync (guestfs_h *g) { logmsg ("sync"); return 0; }
int guestfs_shutdown (guestfs_h *g) { logmsg ("shutdown"); return 0; }
const char *guestfs_last_error (guestfs_h *g) { return g->err[0] ? g->err : NULL; }
int guestfs_last_errno (guestfs_h *g) { return g->errnum; }
