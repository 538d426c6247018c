/* nbdkit-rs: the version of the nbdkit plugin and filter ABI this server
 * implements.  Filters must be built against the exact version they run
 * under (see nbdkit-filter.h).  Part of the nbdkit-rs project (BSD-3-Clause).
 */

#ifndef NBDKIT_VERSION_H
#define NBDKIT_VERSION_H

#if !defined (NBDKIT_PLUGIN_H) && !defined (NBDKIT_FILTER_H)
#error "include <nbdkit-plugin.h> or <nbdkit-filter.h>, not this file"
#endif

#define NBDKIT_VERSION_MAJOR 1
#define NBDKIT_VERSION_MINOR 36
#define NBDKIT_VERSION_MICRO 2
#define NBDKIT_VERSION_STRING "1.36.2"

#endif /* NBDKIT_VERSION_H */
