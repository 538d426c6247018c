/* A stand-in for VMware's libvixDiskLib, for the vddk plugin's tests.
 *
 * It exports the VixDiskLib functions the plugin calls and serves a
 * plain local file as the "VMDK".  Every call is appended to calls.log
 * beside the library; if a file "disk-map" exists there, its first line
 * names the file opened whatever path the plugin asks for (so remote
 * "[datastore] vm/vm.vmdk" names can be tested).
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef uint64_t VixError;
typedef void LogFunc (const char *fmt, va_list args);

struct ConnectParams {
  char *vmxSpec;
  char *serverName;
  char *thumbPrint;
  long reserved1;
  int credType;
  char *creds[3];
  uint32_t port;
  uint32_t nfcHostPort;
  char *reserved3;
  char reserved4[8];
  void *reserved5;
  char *spec[3];
  int specType;
};

struct Info {
  uint32_t bios[3];
  uint32_t phys[3];
  uint64_t capacity;
  int adapterType;
  int numLinks;
  char *parentFileNameHint;
  char *uuid;
  uint32_t logicalSectorSize;
  uint32_t physicalSectorSize;
};

struct Block { uint64_t offset, length; };
struct BlockList { uint32_t numBlocks; struct Block blocks[1]; };

struct CreateParams {
  int diskType;
  int adapterType;
  uint16_t hwVersion;
  uint64_t capacity;
  uint32_t logicalSectorSize;
  uint32_t physicalSectorSize;
};

struct disk { int fd; };

static LogFunc *log_fn, *warn_fn;

static char *
here (const char *name)
{
  Dl_info info;
  char *dir, *ret;
  if (dladdr ((void *) &here, &info) == 0 || info.dli_fname == NULL)
    abort ();
  dir = strdup (info.dli_fname);
  if (asprintf (&ret, "%s/%s", dirname (dir), name) == -1)
    abort ();
  free (dir);
  return ret;
}

static void
record (const char *fmt, ...)
{
  char *path = here ("calls.log");
  FILE *fp = fopen (path, "a");
  va_list ap;
  free (path);
  if (!fp) return;
  va_start (ap, fmt);
  vfprintf (fp, fmt, ap);
  va_end (ap);
  fputc ('\n', fp);
  fclose (fp);
}

static void
call_log (LogFunc *fn, const char *fmt, ...)
{
  va_list ap;
  if (!fn) return;
  va_start (ap, fmt);
  fn (fmt, ap);
  va_end (ap);
}

#define S(s) ((s) ? (s) : "NULL")

VixError
VixDiskLib_InitEx (uint32_t major, uint32_t minor, LogFunc *log,
                   LogFunc *warn, LogFunc *panic,
                   const char *libdir, const char *config)
{
  log_fn = log;
  warn_fn = warn;
  record ("InitEx %u.%u libdir=%s config=%s", major, minor, S(libdir), S(config));
  call_log (log_fn, "stub VDDK says hello to %s number %d\n", "nbdkit", 42);
  return 0;
}

void VixDiskLib_Exit (void) { record ("Exit"); }

char *
VixDiskLib_GetErrorText (VixError err, const char *unused)
{
  char *s;
  if (asprintf (&s, "stub VDDK error %lu", (unsigned long) err) == -1)
    return NULL;
  return s;
}

void VixDiskLib_FreeErrorText (char *text) { free (text); }

struct ConnectParams *
VixDiskLib_AllocateConnectParams (void)
{
  return calloc (1, sizeof (struct ConnectParams));
}

void VixDiskLib_FreeConnectParams (struct ConnectParams *p) { free (p); }

VixError
VixDiskLib_ConnectEx (const struct ConnectParams *p, char ro,
                      const char *snapshot, const char *transports,
                      void **conn)
{
  record ("ConnectEx vm=%s server=%s thumbprint=%s credtype=%d "
          "cred0=%s cred1=%s cred2=%s port=%u nfchostport=%u spectype=%d "
          "readonly=%d snapshot=%s transports=%s",
          S(p->vmxSpec), S(p->serverName), S(p->thumbPrint), p->credType,
          S(p->creds[0]), S(p->creds[1]),
          p->credType == 2 ? S(p->creds[2]) : "-",
          p->port, p->nfcHostPort, p->specType,
          ro, S(snapshot), S(transports));
  *conn = malloc (1);
  return 0;
}

VixError
VixDiskLib_Disconnect (void *conn)
{
  record ("Disconnect");
  free (conn);
  return 0;
}

static const char *
map_path (const char *path, char *buf, size_t n)
{
  char *m = here ("disk-map");
  FILE *fp = fopen (m, "r");
  free (m);
  if (fp) {
    if (fgets (buf, n, fp)) {
      buf[strcspn (buf, "\n")] = 0;
      path = buf;
    }
    fclose (fp);
  }
  return path;
}

VixError
VixDiskLib_Create (void *conn, const char *path,
                   const struct CreateParams *cp, void *progress, void *data)
{
  int fd;
  record ("Create %s type=%d adapter=%d hwversion=%u capacity=%lu",
          path, cp->diskType, cp->adapterType, (unsigned) cp->hwVersion,
          (unsigned long) cp->capacity);
  fd = open (path, O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0644);
  if (fd == -1) {
    call_log (warn_fn, "stub VDDK: cannot create %s: %m\n", path);
    return 13;
  }
  if (ftruncate (fd, cp->capacity * 512) == -1) {
    close (fd);
    return 1;
  }
  close (fd);
  return 0;
}

VixError
VixDiskLib_Open (void *conn, const char *path, uint32_t flags, void **h)
{
  char buf[4096];
  struct disk *d;
  int fd;

  record ("Open %s flags=%u", path, flags);
  path = map_path (path, buf, sizeof buf);
  fd = open (path, ((flags & 4) ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd == -1) {
    call_log (warn_fn, "stub VDDK: cannot open %s: %m\n", path);
    return 4;
  }
  d = malloc (sizeof *d);
  d->fd = fd;
  *h = d;
  return 0;
}

const char *VixDiskLib_GetTransportMode (void *h) { return "file"; }

VixError
VixDiskLib_Close (void *h)
{
  struct disk *d = h;
  record ("Close");
  close (d->fd);
  free (d);
  return 0;
}

VixError
VixDiskLib_GetInfo (void *h, struct Info **info)
{
  struct disk *d = h;
  struct stat st;
  if (fstat (d->fd, &st) == -1) return 1;
  *info = calloc (1, sizeof **info);
  (*info)->capacity = st.st_size / 512;
  (*info)->adapterType = 2;
  (*info)->numLinks = 1;
  (*info)->uuid = strdup ("stub-uuid");
  return 0;
}

void
VixDiskLib_FreeInfo (struct Info *info)
{
  free (info->uuid);
  free (info);
}

VixError
VixDiskLib_Read (void *h, uint64_t start, uint64_t n, unsigned char *buf)
{
  struct disk *d = h;
  if (pread (d->fd, buf, n * 512, start * 512) != (ssize_t) (n * 512))
    return 2;
  return 0;
}

VixError
VixDiskLib_Write (void *h, uint64_t start, uint64_t n,
                  const unsigned char *buf)
{
  struct disk *d = h;
  if (pwrite (d->fd, buf, n * 512, start * 512) != (ssize_t) (n * 512))
    return 2;
  return 0;
}

VixError
VixDiskLib_Flush (void *h)
{
  struct disk *d = h;
  record ("Flush");
  return fsync (d->fd) == -1 ? 2 : 0;
}

VixError VixDiskLib_Wait (void *h) { return 0; }

/* Chunks that hold a non-zero byte are "allocated". */
VixError
VixDiskLib_QueryAllocatedBlocks (void *h, uint64_t start, uint64_t n,
                                 uint64_t chunk, struct BlockList **ret)
{
  struct disk *d = h;
  struct BlockList *l;
  unsigned char *buf;
  uint64_t s, i;
  uint32_t nb = 0;

  record ("QueryAllocatedBlocks %lu %lu %lu", (unsigned long) start,
          (unsigned long) n, (unsigned long) chunk);
  if (chunk < 128 || start % chunk || n % chunk)
    return 3;
  l = calloc (1, sizeof *l + (n / chunk) * sizeof (struct Block));
  buf = malloc (chunk * 512);
  for (s = start; s < start + n; s += chunk) {
    ssize_t r = pread (d->fd, buf, chunk * 512, s * 512);
    int data = 0;
    for (i = 0; r > 0 && i < (uint64_t) r; ++i)
      if (buf[i]) { data = 1; break; }
    if (!data) continue;
    if (nb > 0 && l->blocks[nb-1].offset + l->blocks[nb-1].length == s)
      l->blocks[nb-1].length += chunk;
    else {
      l->blocks[nb].offset = s;
      l->blocks[nb].length = chunk;
      nb++;
    }
  }
  free (buf);
  l->numBlocks = nb;
  *ret = l;
  return 0;
}

VixError VixDiskLib_FreeBlockList (struct BlockList *l) { free (l); return 0; }
