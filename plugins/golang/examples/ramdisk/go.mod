module main

go 1.17

require libguestfs.org/nbdkit v1.0.0

replace libguestfs.org/nbdkit => ../../src/libguestfs.org/nbdkit
