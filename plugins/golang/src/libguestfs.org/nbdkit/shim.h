/* The C side of package nbdkit: the struct nbdkit_plugin whose callbacks
 * call the Go functions exported by callbacks.go, and non-variadic
 * versions of the variadic nbdkit_* functions (cgo cannot call those).
 */
#ifndef NBDKIT_GO_SHIM_H
#define NBDKIT_GO_SHIM_H

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

struct nbdkit_plugin *nbdkit_go_plugin (char *name);
void nbdkit_go_debug (const char *msg);
void nbdkit_go_error (const char *msg);

#endif
