// Package nbdkit writes nbdkit plugins in Go, with the API of nbdkit's
// own Go bindings (nbdkit-golang-plugin(3)): a plugin is a main package
// built with `go build -buildmode=c-shared`, whose exported plugin_init
// returns PluginInitialize(name, &MyPlugin{}). MyPlugin embeds
// nbdkit.Plugin and implements PluginInterface; its Open returns a value
// embedding nbdkit.Connection that implements ConnectionInterface. The
// embedded structs supply the defaults for every callback left out.
//
// As in nbdkit's bindings, PWrite, Flush, Trim and Zero are only called
// when the matching CanWrite, CanFlush, CanTrim or CanZero returns true,
// and the thread model is always parallel.
//
// This package is written for nbdkit-rs; it needs nothing but the Go
// standard library and the nbdkit headers of this repository's include/
// (found relative to this directory; set CGO_CFLAGS=-I... to use others).
package nbdkit

/*
#cgo CFLAGS: -I${SRCDIR}/../../../../../include
#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-in-object-files
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"syscall"
	"unsafe"
)

// PluginError is an error with an errno: returned from a callback, its
// message goes to nbdkit_error and its Errno (when not 0) to
// nbdkit_set_error, so that the client gets that errno. Any other error
// is reported with its Error() text and the client gets EIO.
type PluginError struct {
	Errmsg string        // the message
	Errno  syscall.Errno // the errno for the client, or 0
}

// Error returns the message (and the errno's number, when there is one).
func (e PluginError) Error() string {
	if e.Errno == 0 {
		return e.Errmsg
	}
	return fmt.Sprintf("%s (errno %d)", e.Errmsg, int(e.Errno))
}

// String is Error.
func (e PluginError) String() string {
	return e.Error()
}

// The constants of nbdkit-plugin.h.
const (
	ThreadModelSerializeConnections = uint32(C.NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS)
	ThreadModelSerializeAllRequests = uint32(C.NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS)
	ThreadModelSerializeRequests    = uint32(C.NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS)
	ThreadModelParallel             = uint32(C.NBDKIT_THREAD_MODEL_PARALLEL)

	FlagMayTrim  = uint32(C.NBDKIT_FLAG_MAY_TRIM)
	FlagFUA      = uint32(C.NBDKIT_FLAG_FUA)
	FlagReqOne   = uint32(C.NBDKIT_FLAG_REQ_ONE)
	FlagFastZero = uint32(C.NBDKIT_FLAG_FAST_ZERO)

	FUANone    = uint32(C.NBDKIT_FUA_NONE)
	FUAEmulate = uint32(C.NBDKIT_FUA_EMULATE)
	FUANative  = uint32(C.NBDKIT_FUA_NATIVE)

	CacheNone    = uint32(C.NBDKIT_CACHE_NONE)
	CacheEmulate = uint32(C.NBDKIT_CACHE_EMULATE)
	CacheNative  = uint32(C.NBDKIT_CACHE_NATIVE)

	ExtentHole = uint32(C.NBDKIT_EXTENT_HOLE)
	ExtentZero = uint32(C.NBDKIT_EXTENT_ZERO)

	// APIVersion is the plugin API these bindings use.
	APIVersion = uint32(C.NBDKIT_API_VERSION)
)

// PluginInterface holds the global callbacks. Open is required.
type PluginInterface interface {
	Load()
	Unload()

	DumpPlugin()

	Config(key string, value string) error
	ConfigComplete() error
	GetReady() error

	PreConnect(readonly bool) error
	Open(readonly bool) (ConnectionInterface, error)
}

// ConnectionInterface holds the callbacks of one client connection.
// GetSize and PRead are required.
type ConnectionInterface interface {
	GetSize() (uint64, error)
	IsRotational() (bool, error)
	CanMultiConn() (bool, error)

	PRead(buf []byte, offset uint64, flags uint32) error

	// PWrite is only called when CanWrite returns true.
	CanWrite() (bool, error)
	PWrite(buf []byte, offset uint64, flags uint32) error

	// Flush is only called when CanFlush returns true.
	CanFlush() (bool, error)
	Flush(flags uint32) error

	// Trim is only called when CanTrim returns true.
	CanTrim() (bool, error)
	Trim(count uint32, offset uint64, flags uint32) error

	// Zero is only called when CanZero returns true.
	CanZero() (bool, error)
	Zero(count uint32, offset uint64, flags uint32) error

	Close()
}

// Plugin supplies the default global callbacks: embed it in the plugin's
// struct.
type Plugin struct{}

// Connection supplies the default connection callbacks: embed it in the
// connection's struct.
type Connection struct{}

func missing(name string) error {
	return PluginError{Errmsg: "the plugin does not implement " + name, Errno: syscall.EIO}
}

func (p *Plugin) Load()                                           {}
func (p *Plugin) Unload()                                         {}
func (p *Plugin) DumpPlugin()                                     {}
func (p *Plugin) Config(key string, value string) error           { return nil }
func (p *Plugin) ConfigComplete() error                           { return nil }
func (p *Plugin) GetReady() error                                 { return nil }
func (p *Plugin) PreConnect(readonly bool) error                  { return nil }
func (p *Plugin) Open(readonly bool) (ConnectionInterface, error) { return nil, missing("Open") }

func (c *Connection) Close()                                               {}
func (c *Connection) GetSize() (uint64, error)                             { return 0, missing("GetSize") }
func (c *Connection) IsRotational() (bool, error)                          { return false, nil }
func (c *Connection) CanMultiConn() (bool, error)                          { return false, nil }
func (c *Connection) CanWrite() (bool, error)                              { return false, nil }
func (c *Connection) CanFlush() (bool, error)                              { return false, nil }
func (c *Connection) CanTrim() (bool, error)                               { return false, nil }
func (c *Connection) CanZero() (bool, error)                               { return false, nil }
func (c *Connection) PRead(buf []byte, offset uint64, flags uint32) error  { return missing("PRead") }
func (c *Connection) PWrite(buf []byte, offset uint64, flags uint32) error { return missing("PWrite") }
func (c *Connection) Flush(flags uint32) error                             { return missing("Flush") }
func (c *Connection) Trim(count uint32, offset uint64, flags uint32) error { return missing("Trim") }
func (c *Connection) Zero(count uint32, offset uint64, flags uint32) error { return missing("Zero") }

// The plugin of this shared object.
var impl PluginInterface

// PluginInitialize registers impl as the plugin called name and returns
// the struct nbdkit_plugin that plugin_init must return.
func PluginInitialize(name string, plugin PluginInterface) unsafe.Pointer {
	impl = plugin
	// The name lives as long as the process (the server keeps it).
	return unsafe.Pointer(C.nbdkit_go_plugin(C.CString(name)))
}

// Debug logs a message with nbdkit_debug (shown with -v).
func Debug(s string) {
	cs := C.CString(s)
	defer C.free(unsafe.Pointer(cs))
	C.nbdkit_go_debug(cs)
}

// Error reports an error with nbdkit_error. A callback that returns an
// error does this itself.
func Error(s string) {
	cs := C.CString(s)
	defer C.free(unsafe.Pointer(cs))
	C.nbdkit_go_error(cs)
}

// SetError sets the errno the client gets for a failing callback
// (nbdkit_set_error). A callback that returns a PluginError with an
// Errno does this itself.
func SetError(err syscall.Errno) {
	C.nbdkit_set_error(C.int(err))
}
