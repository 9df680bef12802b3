// SPDX-License-Identifier: GPL-2.0
/* klpfleet lab: a patch of meminfo_proc_show; replace=1 makes it an atomic replace. */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int replace;
module_param(replace, int, 0644);
MODULE_PARM_DESC(replace, "replace (default=0)");

static int livepatch_meminfo_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s: %s\n", THIS_MODULE->name, "this has been live patched");
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "meminfo_proc_show", .new_func = livepatch_meminfo_proc_show },
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

static int __init lab_atomic_replace_init(void)
{
	patch.replace = replace;
	return klp_enable_patch(&patch);
}

static void __exit lab_atomic_replace_exit(void)
{
}

module_init(lab_atomic_replace_init);
module_exit(lab_atomic_replace_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klpfleet lab: patch of meminfo_proc_show");
