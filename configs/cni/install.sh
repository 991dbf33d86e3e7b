#!/bin/sh
# Installs the podswitch CNI plugin on a node, as the DaemonSet's init
# container runs it: the plugin binary into the runtime's CNI bin directory
# and the network configuration list into its CNI config directory.
#
# Each file is first written under a temporary name in its target directory
# and then renamed into place, so a runtime scanning the directories never
# sees a half-written binary or configuration.
#
# Environment (default in brackets):
#   CNI_BIN_DIR              [/opt/cni/bin]    where the runtime looks for plugins
#   CNI_CONF_DIR             [/etc/cni/net.d]  where the runtime reads network configs
#   PODSWITCH_CNI_BIN        [podswitch-cni next to this script, else on PATH]
#   PODSWITCH_CONFLIST       [10-podswitch.conflist next to this script]
#   PODSWITCH_CONFLIST_NAME  [10-podswitch.conflist]  installed file name
#   PODSWITCH_SWITCH_SOCKET  [unset: keep the conflist's]  the node switch's
#                            control socket, written into the installed conflist
set -eu

here=$(cd "$(dirname "$0")" && pwd)
bin_dir=${CNI_BIN_DIR:-/opt/cni/bin}
conf_dir=${CNI_CONF_DIR:-/etc/cni/net.d}
conflist=${PODSWITCH_CONFLIST:-$here/10-podswitch.conflist}
conflist_name=${PODSWITCH_CONFLIST_NAME:-10-podswitch.conflist}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

if [ -n "${PODSWITCH_CNI_BIN:-}" ]; then
    plugin=$PODSWITCH_CNI_BIN
elif [ -x "$here/podswitch-cni" ]; then
    plugin=$here/podswitch-cni
elif plugin=$(command -v podswitch-cni 2>/dev/null); then
    :
else
    die "podswitch-cni not found: set PODSWITCH_CNI_BIN"
fi
[ -f "$plugin" ] && [ -x "$plugin" ] || die "$plugin is not an executable file"
[ -f "$conflist" ] || die "$conflist not found: set PODSWITCH_CONFLIST"
case $conflist_name in
    */* | "" | .*) die "PODSWITCH_CONFLIST_NAME must be a plain file name, not '$conflist_name'" ;;
esac

mkdir -p "$bin_dir" "$conf_dir" || die "cannot create $bin_dir or $conf_dir"

tmp_bin="$bin_dir/.podswitch-cni.tmp.$$"
tmp_conf="$conf_dir/.$conflist_name.tmp.$$"
trap 'rm -f "$tmp_bin" "$tmp_conf"' EXIT
trap 'exit 1' HUP INT TERM

cp "$plugin" "$tmp_bin" || die "cannot copy $plugin to $bin_dir"
chmod 0755 "$tmp_bin"
mv -f "$tmp_bin" "$bin_dir/podswitch-cni" || die "cannot install $bin_dir/podswitch-cni"

if [ -n "${PODSWITCH_SWITCH_SOCKET:-}" ]; then
    case $PODSWITCH_SWITCH_SOCKET in
        /*) ;;
        *) die "PODSWITCH_SWITCH_SOCKET must be an absolute path" ;;
    esac
    case $PODSWITCH_SWITCH_SOCKET in
        *[\"\\\|\&]*) die "PODSWITCH_SWITCH_SOCKET must not contain \" \\ | or &" ;;
    esac
    grep -q '"switchSocket"' "$conflist" || die "$conflist has no switchSocket to replace"
    sed "s|\"switchSocket\": *\"[^\"]*\"|\"switchSocket\": \"$PODSWITCH_SWITCH_SOCKET\"|" \
        "$conflist" >"$tmp_conf" || die "cannot write $tmp_conf"
else
    cp "$conflist" "$tmp_conf" || die "cannot copy $conflist to $conf_dir"
fi
chmod 0644 "$tmp_conf"
mv -f "$tmp_conf" "$conf_dir/$conflist_name" || die "cannot install $conf_dir/$conflist_name"

# The chain needs the reference plugins next to ours.
for p in portmap bandwidth; do
    [ -x "$bin_dir/$p" ] || echo "install.sh: warning: $bin_dir/$p is missing; the conflist chains it (install containernetworking-plugins)" >&2
done
echo "installed $bin_dir/podswitch-cni and $conf_dir/$conflist_name"
