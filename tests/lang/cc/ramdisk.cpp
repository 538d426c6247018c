// A C++ RAM disk of 4M for `nbdkit cc CC=g++`: the disk is a std::vector
// built by a static constructor. The struct is registered the way
// nbdkit-plugin(3) ("WRITING PLUGINS IN C++") shows; the test appends the
// manual's own fragment (create_plugin and NBDKIT_REGISTER_PLUGIN) after
// these callbacks.
#include <cstdint>
#include <cstring>
#include <vector>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS

namespace {
  // Built by a static constructor when the object is loaded.
  std::vector<unsigned char> disk (4 * 1024 * 1024);

  void *
  myplugin_open (int)
  {
    return NBDKIT_HANDLE_NOT_NEEDED;
  }

  int64_t
  myplugin_get_size (void *)
  {
    return static_cast<int64_t> (disk.size ());
  }

  int
  myplugin_pread (void *, void *buf, uint32_t count, uint64_t offset,
                  uint32_t)
  {
    std::memcpy (buf, disk.data () + offset, count);
    return 0;
  }

  int
  myplugin_pwrite (void *, const void *buf, uint32_t count, uint64_t offset,
                   uint32_t)
  {
    std::memcpy (disk.data () + offset, buf, count);
    return 0;
  }
}
