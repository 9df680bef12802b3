// SPDX-License-Identifier: GPL-2.0
/*
 * klpfleet lab: a realistic patch of a /proc show function; reading /proc/cmdline shows its effect, in the
 * words of the kernel selftests' module of this name (the module's name first). The lab also builds it with
 * -DLAB_REBUILD (the same name, another build: a new fix for the same CVE).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
#ifdef LAB_REBUILD
	seq_printf(m, "%s: %s\n", THIS_MODULE->name, "this has been live patched (rebuilt)");
#else
	seq_printf(m, "%s: %s\n", THIS_MODULE->name, "this has been live patched");
#endif
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = livepatch_cmdline_proc_show },
	{}
};

static struct klp_object objs[] = {
	{ .name = NULL, .funcs = funcs },
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init lab_livepatch_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit lab_livepatch_exit(void)
{
}

module_init(lab_livepatch_init);
module_exit(lab_livepatch_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klpfleet lab: patch of cmdline_proc_show");
