package nbdkit

// The Go half of every callback, called by the C wrappers in shim.c.
// A connection is a runtime/cgo.Handle holding its ConnectionInterface
// (never 0, so that a failed open can return NULL). A panic in the plugin
// is reported as an error instead of crashing the server.

/*
#include <stdint.h>
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"syscall"
	"unsafe"
)

// report hands err to the server (nbdkit_set_error, nbdkit_error).
func report(err error) {
	if perr, ok := err.(PluginError); ok {
		if perr.Errno != 0 {
			SetError(perr.Errno)
		}
		Error(perr.Errmsg)
		return
	}
	Error(err.Error())
}

// status runs f and turns its result into nbdkit's 0 / -1.
func status(f func() error) (r C.int) {
	defer func() {
		if p := recover(); p != nil {
			report(PluginError{Errmsg: fmt.Sprint("panic: ", p), Errno: syscall.EIO})
			r = -1
		}
	}()
	if err := f(); err != nil {
		report(err)
		return -1
	}
	return 0
}

// boolean runs f and turns its result into nbdkit's 1 / 0 / -1.
func boolean(f func() (bool, error)) C.int {
	var b bool
	r := status(func() error {
		var err error
		b, err = f()
		return err
	})
	if r == 0 && b {
		return 1
	}
	return r
}

func conn(h C.uintptr_t) ConnectionInterface {
	return cgo.Handle(h).Value().(ConnectionInterface)
}

// bytes is the server's buffer as a slice, valid during the call.
func bytes(buf unsafe.Pointer, count C.uint32_t) []byte {
	if count == 0 {
		return []byte{}
	}
	return unsafe.Slice((*byte)(buf), int(count))
}

//export goLoad
func goLoad() { status(func() error { impl.Load(); return nil }) }

//export goUnload
func goUnload() { status(func() error { impl.Unload(); return nil }) }

//export goDumpPlugin
func goDumpPlugin() { status(func() error { impl.DumpPlugin(); return nil }) }

//export goConfig
func goConfig(key *C.char, value *C.char) C.int {
	k, v := C.GoString(key), C.GoString(value)
	return status(func() error { return impl.Config(k, v) })
}

//export goConfigComplete
func goConfigComplete() C.int { return status(impl.ConfigComplete) }

//export goGetReady
func goGetReady() C.int { return status(impl.GetReady) }

//export goPreConnect
func goPreConnect(readonly C.int) C.int {
	return status(func() error { return impl.PreConnect(readonly != 0) })
}

//export goOpen
func goOpen(readonly C.int) C.uintptr_t {
	var h C.uintptr_t
	status(func() error {
		c, err := impl.Open(readonly != 0)
		if err != nil {
			return err
		}
		if c == nil {
			return PluginError{Errmsg: "Open returned no connection", Errno: syscall.EIO}
		}
		h = C.uintptr_t(cgo.NewHandle(c))
		return nil
	})
	return h
}

//export goClose
func goClose(h C.uintptr_t) {
	status(func() error { conn(h).Close(); return nil })
	cgo.Handle(h).Delete()
}

//export goGetSize
func goGetSize(h C.uintptr_t) C.int64_t {
	var size uint64
	if status(func() error {
		var err error
		size, err = conn(h).GetSize()
		return err
	}) == -1 {
		return -1
	}
	return C.int64_t(size)
}

//export goCanWrite
func goCanWrite(h C.uintptr_t) C.int { return boolean(conn(h).CanWrite) }

//export goCanFlush
func goCanFlush(h C.uintptr_t) C.int { return boolean(conn(h).CanFlush) }

//export goIsRotational
func goIsRotational(h C.uintptr_t) C.int { return boolean(conn(h).IsRotational) }

//export goCanTrim
func goCanTrim(h C.uintptr_t) C.int { return boolean(conn(h).CanTrim) }

//export goCanZero
func goCanZero(h C.uintptr_t) C.int { return boolean(conn(h).CanZero) }

//export goCanMultiConn
func goCanMultiConn(h C.uintptr_t) C.int { return boolean(conn(h).CanMultiConn) }

//export goPRead
func goPRead(h C.uintptr_t, buf unsafe.Pointer, count C.uint32_t, offset C.uint64_t, flags C.uint32_t) C.int {
	return status(func() error { return conn(h).PRead(bytes(buf, count), uint64(offset), uint32(flags)) })
}

//export goPWrite
func goPWrite(h C.uintptr_t, buf unsafe.Pointer, count C.uint32_t, offset C.uint64_t, flags C.uint32_t) C.int {
	return status(func() error { return conn(h).PWrite(bytes(buf, count), uint64(offset), uint32(flags)) })
}

//export goFlush
func goFlush(h C.uintptr_t, flags C.uint32_t) C.int {
	return status(func() error { return conn(h).Flush(uint32(flags)) })
}

//export goTrim
func goTrim(h C.uintptr_t, count C.uint32_t, offset C.uint64_t, flags C.uint32_t) C.int {
	return status(func() error { return conn(h).Trim(uint32(count), uint64(offset), uint32(flags)) })
}

//export goZero
func goZero(h C.uintptr_t, count C.uint32_t, offset C.uint64_t, flags C.uint32_t) C.int {
	return status(func() error { return conn(h).Zero(uint32(count), uint64(offset), uint32(flags)) })
}
