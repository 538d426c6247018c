// A thin C interface over the parts of libtorrent-rasterbar (C++) that
// the torrent plugin uses.  The plugin's logic lives in Rust (lib.rs);
// this file only converts types and catches exceptions.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <libtorrent/alert_types.hpp>
#include <libtorrent/download_priority.hpp>
#include <libtorrent/magnet_uri.hpp>
#include <libtorrent/session.hpp>
#include <libtorrent/torrent_info.hpp>

namespace lt = libtorrent;

struct tt {
  lt::settings_pack pack;
  lt::add_torrent_params params;
  std::unique_ptr<lt::session> session;
  lt::torrent_handle handle;
};

static char *dup (const std::string &s) { return strdup (s.c_str ()); }

extern "C" {

tt *tt_new (void)
{
  try {
    tt *t = new tt;
    t->pack.set_int (lt::settings_pack::alert_mask,
                     lt::alert_category::error
                     | lt::alert_category::piece_progress
                     | lt::alert_category::status
                     | lt::alert_category::storage);
    t->pack.set_bool (lt::settings_pack::auto_sequential, true);
    t->pack.set_bool (lt::settings_pack::strict_end_game_mode, false);
    t->pack.set_bool (lt::settings_pack::announce_to_all_trackers, true);
    t->pack.set_bool (lt::settings_pack::announce_to_all_tiers, true);
    return t;
  } catch (...) { return nullptr; }
}

void tt_free (tt *t) { delete t; }

/* A setting by libtorrent's name; returns -1 for an unknown name. */
int tt_set_int (tt *t, const char *name, int v)
{
  int s = lt::setting_by_name (name);
  if (s < 0) return -1;
  t->pack.set_int (s, v);
  return 0;
}

int tt_set_str (tt *t, const char *name, const char *v)
{
  int s = lt::setting_by_name (name);
  if (s < 0) return -1;
  t->pack.set_str (s, v);
  return 0;
}

int tt_set_bool (tt *t, const char *name, int v)
{
  int s = lt::setting_by_name (name);
  if (s < 0) return -1;
  t->pack.set_bool (s, v != 0);
  return 0;
}

/* The torrent: a .torrent file or a magnet URI.  On error returns -1 and
 * a malloc'd message in *err. */
int tt_torrent_file (tt *t, const char *path, char **err)
{
  lt::error_code ec;
  auto ti = std::make_shared<lt::torrent_info> (std::string (path), ec);
  if (ec) { *err = dup (ec.message ()); return -1; }
  t->params.ti = ti;
  return 0;
}

int tt_magnet (tt *t, const char *uri, char **err)
{
  lt::error_code ec;
  lt::parse_magnet_uri (uri, t->params, ec);
  if (ec) { *err = dup (ec.message ()); return -1; }
  return 0;
}

void tt_save_path (tt *t, const char *dir) { t->params.save_path = dir; }

/* Start the session (its threads) and add the torrent. */
int tt_start (tt *t, char **err)
{
  try {
    t->session.reset (new lt::session (t->pack));
    lt::error_code ec;
    t->handle = t->session->add_torrent (t->params, ec);
    if (ec) { *err = dup (ec.message ()); return -1; }
    return 0;
  } catch (std::exception &e) {
    *err = dup (e.what ());
    return -1;
  }
}

/* Stop: remove the torrent (and its files when delete_files). */
void tt_stop (tt *t, int delete_files)
{
  try {
    if (t->session && t->handle.is_valid ()) {
      lt::remove_flags_t flags{};
      if (delete_files) flags = lt::session_handle::delete_files;
      t->session->remove_torrent (t->handle, flags);
    }
    t->session.reset ();
  } catch (...) {}
}

/* Pop the session's alerts (waiting up to timeout_ms for one), passing
 * each message to log.  Returns a mask: 1 = a piece finished, 2 =
 * metadata arrived, 4 = an error alert (its message also to log_error). */
int tt_pop_alerts (tt *t, int timeout_ms,
                   void (*log) (void *, const char *), void *data)
{
  int ret = 0;
  try {
    if (!t->session->wait_for_alert (lt::milliseconds (timeout_ms)))
      return 0;
    std::vector<lt::alert *> alerts;
    t->session->pop_alerts (&alerts);
    for (lt::alert *a : alerts) {
      log (data, a->message ().c_str ());
      if (lt::alert_cast<lt::piece_finished_alert> (a)) ret |= 1;
      if (lt::alert_cast<lt::metadata_received_alert> (a)) ret |= 2;
      if (lt::alert_cast<lt::add_torrent_alert> (a)) ret |= 2;
      if (a->category () & lt::alert_category::error) ret |= 4;
    }
  } catch (...) {}
  return ret;
}

int tt_has_metadata (tt *t)
{
  try { return t->handle.torrent_file () != nullptr; } catch (...) { return 0; }
}

int tt_num_files (tt *t)
{
  auto ti = t->handle.torrent_file ();
  return ti ? ti->num_files () : 0;
}

char *tt_file_path (tt *t, int i)
{
  auto ti = t->handle.torrent_file ();
  return ti ? dup (ti->files ().file_path (lt::file_index_t (i))) : nullptr;
}

int64_t tt_file_size (tt *t, int i)
{
  auto ti = t->handle.torrent_file ();
  return ti ? ti->files ().file_size (lt::file_index_t (i)) : -1;
}

/* Where bytes [offset, offset+len) of file i start: the piece, the
 * offset in it, and how many of the bytes lie in that piece. */
int tt_map (tt *t, int i, int64_t offset, int len,
            int *piece, int *start, int *count)
{
  auto ti = t->handle.torrent_file ();
  if (!ti) return -1;
  lt::peer_request r = ti->map_file (lt::file_index_t (i), offset, len);
  int psize = ti->piece_size (r.piece);
  *piece = static_cast<int> (r.piece);
  *start = r.start;
  *count = std::min (psize - r.start, r.length);
  return 0;
}

int tt_have_piece (tt *t, int piece)
{
  try { return t->handle.have_piece (lt::piece_index_t (piece)); }
  catch (...) { return 0; }
}

/* Ask for the piece now (time-critical, top priority). */
void tt_want_piece (tt *t, int piece)
{
  try {
    t->handle.piece_priority (lt::piece_index_t (piece), lt::top_priority);
    t->handle.set_piece_deadline (lt::piece_index_t (piece), 0);
  } catch (...) {}
}

void tt_free_string (char *s) { free (s); }

}
