// A RAM disk plugin in Go: size=SIZE bytes (a number with an optional
// K, M or G suffix; required), readable and writable from any number of
// connections at once, with flush, trim and zero.
//
//	cd plugins/golang/examples/ramdisk
//	go build -o nbdkit-goramdisk-plugin.so -buildmode=c-shared
//	nbdkit ./nbdkit-goramdisk-plugin.so size=64M
package main

import (
	"C"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"libguestfs.org/nbdkit"
)

type RAMDiskPlugin struct {
	nbdkit.Plugin
}

type RAMDiskConnection struct {
	nbdkit.Connection
	readonly bool
}

var (
	size    uint64
	sizeSet bool
	lock    sync.RWMutex
	disk    []byte
)

func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	switch {
	case strings.HasSuffix(s, "K"), strings.HasSuffix(s, "k"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"):
		mult = 1 << 20
	case strings.HasSuffix(s, "G"):
		mult = 1 << 30
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > (1<<62)/mult {
		return 0, fmt.Errorf("cannot parse size %q", s)
	}
	return n * mult, nil
}

func (p *RAMDiskPlugin) Config(key string, value string) error {
	if key != "size" {
		return nbdkit.PluginError{Errmsg: "unknown parameter " + key, Errno: syscall.EINVAL}
	}
	var err error
	size, err = parseSize(value)
	sizeSet = err == nil
	return err
}

func (p *RAMDiskPlugin) ConfigComplete() error {
	if !sizeSet {
		return nbdkit.PluginError{Errmsg: "size parameter is required", Errno: syscall.EINVAL}
	}
	return nil
}

func (p *RAMDiskPlugin) GetReady() error {
	disk = make([]byte, size)
	return nil
}

func (p *RAMDiskPlugin) Open(readonly bool) (nbdkit.ConnectionInterface, error) {
	nbdkit.Debug(fmt.Sprintf("goramdisk: open, readonly=%v", readonly))
	return &RAMDiskConnection{readonly: readonly}, nil
}

func (c *RAMDiskConnection) GetSize() (uint64, error) {
	return size, nil
}

// All connections see one disk, and each write is done before it is
// acknowledged: clients may use several connections.
func (c *RAMDiskConnection) CanMultiConn() (bool, error) {
	return true, nil
}

func (c *RAMDiskConnection) PRead(buf []byte, offset uint64, flags uint32) error {
	lock.RLock()
	defer lock.RUnlock()
	copy(buf, disk[offset:offset+uint64(len(buf))])
	return nil
}

func (c *RAMDiskConnection) CanWrite() (bool, error) {
	return !c.readonly, nil
}

func (c *RAMDiskConnection) PWrite(buf []byte, offset uint64, flags uint32) error {
	lock.Lock()
	defer lock.Unlock()
	copy(disk[offset:offset+uint64(len(buf))], buf)
	return nil
}

func (c *RAMDiskConnection) CanFlush() (bool, error) {
	return true, nil
}

func (c *RAMDiskConnection) Flush(flags uint32) error {
	return nil
}

func (c *RAMDiskConnection) CanTrim() (bool, error) {
	return true, nil
}

func (c *RAMDiskConnection) Trim(count uint32, offset uint64, flags uint32) error {
	return c.Zero(count, offset, flags)
}

func (c *RAMDiskConnection) CanZero() (bool, error) {
	return true, nil
}

func (c *RAMDiskConnection) Zero(count uint32, offset uint64, flags uint32) error {
	lock.Lock()
	defer lock.Unlock()
	region := disk[offset : offset+uint64(count)]
	for i := range region {
		region[i] = 0
	}
	return nil
}

// Every Go plugin ends with these two functions.

//export plugin_init
func plugin_init() unsafe.Pointer {
	return nbdkit.PluginInitialize("goramdisk", &RAMDiskPlugin{})
}

func main() {}
