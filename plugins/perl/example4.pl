#!/usr/sbin/nbdkit perl
# nbdkit-example4-plugin: a RAM disk written in Perl (nbdkit-example4-plugin(1)).
#
#   nbdkit example4 size=SIZE
#
# serves SIZE bytes, all zeroes at first, readable and writable by every
# client; the data go when nbdkit exits.  This project's build installs it
# beside the nbdkit executable as nbdkit-example4-plugin.

use strict;
use warnings;

my $size;
my $disk;

sub config
{
    my ($key, $value) = @_;
    die "example4: unknown parameter $key\n" unless $key eq "size";
    # Bytes, or a number with a K, M, G or T suffix (powers of 1024).
    my %scale = ("" => 0, k => 1, m => 2, g => 3, t => 4);
    die "example4: size must be a number of bytes: $value\n"
        unless $value =~ /^(\d+)([kmgt]?)$/i;
    $size = $1 * 1024 ** $scale{lc $2};
}

sub config_complete
{
    die "example4: the size=SIZE parameter is required\n" unless defined $size;
}

sub get_ready
{
    $disk = "\0" x $size;
}

sub open
{
    my ($readonly) = @_;
    return { readonly => $readonly };
}

sub get_size
{
    return $size;
}

sub pread
{
    my ($h, $count, $offset, $flags) = @_;
    return substr ($disk, $offset, $count);
}

sub pwrite
{
    my ($h, $buf, $offset, $flags) = @_;
    substr ($disk, $offset, length ($buf)) = $buf;
}

sub zero
{
    my ($h, $count, $offset, $flags) = @_;
    substr ($disk, $offset, $count) = "\0" x $count;
}
