/* The part of the perl plugin that needs Perl's C API, which is mostly
 * macros (the argument stack, reference counts, the interpreter context):
 * start the interpreter with the Nbdkit:: package, load a script, call a
 * subroutine, and make and read Perl values.  Everything else (the
 * callbacks, their arguments and results, errors) is in Rust (lib.rs).
 *
 * One interpreter per server; the Rust side calls in here with a lock
 * held, from any thread: every entry point makes the interpreter the
 * current thread's context first.
 */

#include <EXTERN.h>
#include <perl.h>
#include <XSUB.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern void nbdkit_debug (const char *fs, ...);
extern void nbdkit_set_error (int err);

EXTERN_C void boot_DynaLoader (pTHX_ CV *cv);

static PerlInterpreter *my_perl;

/* The errno the script last gave Nbdkit::set_error (0: none). */
static int last_errno;

#define CONTEXT PERL_SET_CONTEXT (my_perl)

XS (nbdkit_perl_debug)
{
  dXSARGS;
  if (items >= 1) {
    const char *msg = SvPV_nolen (ST (0));
    nbdkit_debug ("%s", msg);
  }
  XSRETURN_EMPTY;
}

XS (nbdkit_perl_set_error)
{
  dXSARGS;
  if (items >= 1) {
    int err = (int) SvIV (ST (0));
    last_errno = err;
    nbdkit_set_error (err);
  }
  XSRETURN_EMPTY;
}

static void
constant (pTHX_ const char *name, IV value)
{
  SV *sv = get_sv (name, GV_ADD);
  sv_setiv (sv, value);
}

static void
xs_init (pTHX)
{
  newXS ("DynaLoader::boot_DynaLoader", boot_DynaLoader, __FILE__);
  newXS ("Nbdkit::debug", nbdkit_perl_debug, __FILE__);
  newXS ("Nbdkit::set_error", nbdkit_perl_set_error, __FILE__);
  constant (aTHX_ "Nbdkit::FLAG_MAY_TRIM", 1 << 0);
  constant (aTHX_ "Nbdkit::FLAG_FUA", 1 << 1);
  constant (aTHX_ "Nbdkit::FLAG_REQ_ONE", 1 << 2);
  constant (aTHX_ "Nbdkit::FLAG_FAST_ZERO", 1 << 3);
  constant (aTHX_ "Nbdkit::FUA_NONE", 0);
  constant (aTHX_ "Nbdkit::FUA_EMULATE", 1);
  constant (aTHX_ "Nbdkit::FUA_NATIVE", 2);
  constant (aTHX_ "Nbdkit::CACHE_NONE", 0);
  constant (aTHX_ "Nbdkit::CACHE_EMULATE", 1);
  constant (aTHX_ "Nbdkit::CACHE_NATIVE", 2);
  constant (aTHX_ "Nbdkit::EXTENT_HOLE", 1 << 0);
  constant (aTHX_ "Nbdkit::EXTENT_ZERO", 1 << 1);
}

/* Start the interpreter (an empty program).  0 on success. */
int
nbdkit_perl_start (void)
{
  static int argc = 3;
  static char arg0[] = "", arg1[] = "-e", arg2[] = "0";
  static char *args[] = { arg0, arg1, arg2, NULL };
  static char *envs[] = { NULL };
  char **argv = args, **env = envs;

  PERL_SYS_INIT3 (&argc, &argv, &env);
  my_perl = perl_alloc ();
  if (!my_perl)
    return -1;
  CONTEXT;
  perl_construct (my_perl);
  PL_exit_flags |= PERL_EXIT_DESTRUCT_END;
  if (perl_parse (my_perl, xs_init, argc, argv, NULL) != 0)
    return -1;
  if (perl_run (my_perl) != 0)
    return -1;
  return 0;
}

/* Run END blocks and free the interpreter. */
void
nbdkit_perl_stop (void)
{
  if (!my_perl)
    return;
  CONTEXT;
  perl_destruct (my_perl);
  perl_free (my_perl);
  my_perl = NULL;
}

/* A copy of $@ when it is set (malloc'd), else NULL. */
static char *
eval_error (pTHX)
{
  SV *err = ERRSV;
  STRLEN len;
  const char *s;
  char *r;

  if (!SvTRUE (err))
    return NULL;
  s = SvPV (err, len);
  r = malloc (len + 1);
  if (r) {
    memcpy (r, s, len);
    r[len] = '\0';
  }
  return r;
}

/* Run the script SOURCE (the text of FILE) in package main, as FILE: its
 * top-level code runs, its subs are defined in package main and Perl's
 * messages name FILE and its lines.  On failure, *err is Perl's message. */
int
nbdkit_perl_load (const char *file, const char *source, size_t len,
                  char **err)
{
  SV *code;
  CONTEXT;
  code = newSVpvf ("package main;\n#line 1 \"%s\"\n", file);
  sv_catpvn (code, source, len);
  eval_sv (code, G_DISCARD);
  SvREFCNT_dec (code);
  *err = eval_error (aTHX);
  return *err ? -1 : 0;
}

/* Whether sub NAME (in main) is defined. */
int
nbdkit_perl_defined (const char *name)
{
  CV *cv;
  CONTEXT;
  cv = get_cv (name, 0);
  return cv && (CvROOT (cv) || CvXSUB (cv));
}

const char *
nbdkit_perl_version (void)
{
  SV *v;
  CONTEXT;
  v = eval_pv ("sprintf ('%vd', $^V)", FALSE);
  return v && SvOK (v) ? SvPV_nolen (v) : "";
}

void nbdkit_perl_clear_errno (void) { last_errno = 0; }
int nbdkit_perl_errno (void) { return last_errno; }

/* Values: made here with one reference, which nbdkit_perl_call takes
 * over for its arguments; results are owned by the caller (free them
 * with nbdkit_perl_free). */
SV *nbdkit_perl_uv (uint64_t v) { CONTEXT; return newSVuv ((UV) v); }
SV *nbdkit_perl_bool (int v) { CONTEXT; return newSViv (v ? 1 : 0); }
SV *nbdkit_perl_str (const char *s, size_t len)
{
  CONTEXT;
  return newSVpvn (s, len);
}
SV *nbdkit_perl_ref (SV *sv) { CONTEXT; return SvREFCNT_inc (sv); }
void nbdkit_perl_free (SV *sv) { CONTEXT; SvREFCNT_dec (sv); }

/* Call sub NAME with ARGS (taken over), in scalar context (list: all
 * results as one array reference).  On a die, -1 and *err (malloc'd). */
int
nbdkit_perl_call (const char *name, SV **args, int nargs, int list,
                  SV **ret, char **err)
{
  int count, i;
  CONTEXT;
  {
    dSP;
    ENTER;
    SAVETMPS;
    PUSHMARK (SP);
    EXTEND (SP, nargs);
    for (i = 0; i < nargs; i++)
      PUSHs (sv_2mortal (args[i]));
    PUTBACK;
    count = call_pv (name, (list ? G_LIST : G_SCALAR) | G_EVAL);
    SPAGAIN;
    *err = eval_error (aTHX);
    *ret = NULL;
    if (!*err) {
      if (list) {
        AV *av = newAV ();
        SV **base = SP - count + 1;
        for (i = 0; i < count; i++)
          av_push (av, newSVsv (base[i]));
        *ret = newRV_noinc ((SV *) av);
      }
      else
        *ret = count > 0 ? newSVsv (*SP) : newSV (0);
    }
    SP -= count;
    PUTBACK;
    FREETMPS;
    LEAVE;
  }
  return *err ? -1 : 0;
}

/* What a value is: 0 undef, 1 a plain scalar, 2 an array reference,
 * 3 another reference. */
int
nbdkit_perl_kind (SV *sv)
{
  CONTEXT;
  if (!SvOK (sv))
    return 0;
  if (!SvROK (sv))
    return 1;
  return SvTYPE (SvRV (sv)) == SVt_PVAV ? 2 : 3;
}

/* A plain scalar as an integer; -1 if it does not look like a number. */
int
nbdkit_perl_to_i64 (SV *sv, int64_t *v)
{
  CONTEXT;
  if (!SvOK (sv) || SvROK (sv) || !looks_like_number (sv))
    return -1;
  if (SvIsUV (sv))
    *v = (int64_t) SvUV (sv);
  else
    *v = (int64_t) SvIV (sv);
  return 0;
}

int nbdkit_perl_truth (SV *sv) { CONTEXT; return SvTRUE (sv) ? 1 : 0; }

/* The bytes of a scalar (its string value, as bytes); NULL when it holds
 * characters above 255. */
const char *
nbdkit_perl_bytes (SV *sv, size_t *len)
{
  STRLEN l;
  const char *s;
  CONTEXT;
  if (SvUTF8 (sv) && !sv_utf8_downgrade (sv, TRUE))
    return NULL;
  s = SvPV (sv, l);
  *len = l;
  return s;
}

/* The text of a scalar as UTF-8. */
const char *
nbdkit_perl_text (SV *sv, size_t *len)
{
  STRLEN l;
  const char *s;
  CONTEXT;
  s = SvPVutf8 (sv, l);
  *len = l;
  return s;
}

/* The elements of an array reference. */
size_t
nbdkit_perl_av_len (SV *ref)
{
  CONTEXT;
  return (size_t) (av_len ((AV *) SvRV (ref)) + 1);
}

/* Element I of an array reference (borrowed; undef for a hole). */
SV *
nbdkit_perl_av_get (SV *ref, size_t i)
{
  SV **p;
  CONTEXT;
  p = av_fetch ((AV *) SvRV (ref), (SSize_t) i, 0);
  return p ? *p : &PL_sv_undef;
}
