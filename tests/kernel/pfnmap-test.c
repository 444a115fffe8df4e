// SPDX-License-Identifier: GPL-2.0
/*
 * gh-pfnmap-test: a test-only misc device whose mmap() gives the caller
 * RAM the way TTM's system-memory pool does, for the privcmd selftest
 * (hostmem-selftest.c, test_lend_unreferenced). Never loaded outside the
 * test bed.
 *
 * - mmap() of up to 64 pages (MAP_SHARED, offset 0): one higher-order block
 *   allocated WITHOUT __GFP_COMP, so the pages after the first have no
 *   reference count of their own, mapped VM_PFNMAP | VM_IO with
 *   vmf_insert_pfn() at fault time, as TTM maps a buffer object.
 * - GH_PFNMAP_EVICT: what TTM does to move a buffer: zap every user mapping
 *   (unmap_mapping_range()), free the block and allocate a new one, whose
 *   pages the next faults map. The first word of every page holds the
 *   block's generation (1, 2, ...) so a reader can tell them apart.
 * One buffer per open file.
 */
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>

#define GH_PFNMAP_EVICT		_IO('G', 1)
#define GH_PFNMAP_MAX_PAGES	64

struct gh_pfnmap {
	struct mutex lock;	/* protects the fields below */
	struct page *block;	/* NULL until mmap() */
	unsigned int order;
	unsigned long nr_pages;
	u64 generation;
	bool mapped;
};

static int gh_pfnmap_fill(struct gh_pfnmap *b)
{
	unsigned long i;

	b->block = alloc_pages(GFP_KERNEL | __GFP_ZERO, b->order);
	if (!b->block)
		return -ENOMEM;
	b->generation++;
	for (i = 0; i < b->nr_pages; i++)
		*(u64 *)page_address(b->block + i) = b->generation;
	return 0;
}

static vm_fault_t gh_pfnmap_fault(struct vm_fault *vmf)
{
	struct gh_pfnmap *b = vmf->vma->vm_file->private_data;
	vm_fault_t ret = VM_FAULT_SIGBUS;

	mutex_lock(&b->lock);
	if (b->block && vmf->pgoff < b->nr_pages)
		ret = vmf_insert_pfn(vmf->vma, vmf->address,
				     page_to_pfn(b->block + vmf->pgoff));
	mutex_unlock(&b->lock);
	return ret;
}

/* One mapping per buffer, never split: its lifetime is the buffer's. */
static int gh_pfnmap_may_split(struct vm_area_struct *vma, unsigned long addr)
{
	return -EINVAL;
}

static const struct vm_operations_struct gh_pfnmap_vm_ops = {
	.fault = gh_pfnmap_fault,
	.may_split = gh_pfnmap_may_split,
};

static int gh_pfnmap_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct gh_pfnmap *b = file->private_data;
	unsigned long n = vma_pages(vma);
	int rc = 0;

	if (!(vma->vm_flags & VM_SHARED) || vma->vm_pgoff ||
	    !n || n > GH_PFNMAP_MAX_PAGES)
		return -EINVAL;

	mutex_lock(&b->lock);
	if (b->mapped) {
		rc = -EBUSY;
	} else {
		b->nr_pages = n;
		b->order = get_order(n << PAGE_SHIFT);
		rc = gh_pfnmap_fill(b);
	}
	if (!rc) {
		b->mapped = true;
		vm_flags_set(vma, VM_PFNMAP | VM_IO | VM_DONTEXPAND |
			     VM_DONTDUMP | VM_DONTCOPY);
		vma->vm_ops = &gh_pfnmap_vm_ops;
	}
	mutex_unlock(&b->lock);
	return rc;
}

static long gh_pfnmap_ioctl(struct file *file, unsigned int cmd,
			    unsigned long arg)
{
	struct gh_pfnmap *b = file->private_data;
	int rc;

	if (cmd != GH_PFNMAP_EVICT)
		return -ENOTTY;

	mutex_lock(&b->lock);
	if (!b->block) {
		mutex_unlock(&b->lock);
		return -EINVAL;
	}
	/* As TTM before it moves a buffer: no user mapping is left. */
	unmap_mapping_range(file->f_mapping, 0, 0, 1);
	__free_pages(b->block, b->order);
	b->block = NULL;
	rc = gh_pfnmap_fill(b);
	mutex_unlock(&b->lock);
	return rc;
}

static int gh_pfnmap_open(struct inode *inode, struct file *file)
{
	struct gh_pfnmap *b = kzalloc(sizeof(*b), GFP_KERNEL);

	if (!b)
		return -ENOMEM;
	mutex_init(&b->lock);
	file->private_data = b;
	return 0;
}

/* The last reference to the file: no mapping of it is left. */
static int gh_pfnmap_release(struct inode *inode, struct file *file)
{
	struct gh_pfnmap *b = file->private_data;

	if (b->block)
		__free_pages(b->block, b->order);
	kfree(b);
	return 0;
}

static const struct file_operations gh_pfnmap_fops = {
	.owner = THIS_MODULE,
	.open = gh_pfnmap_open,
	.release = gh_pfnmap_release,
	.mmap = gh_pfnmap_mmap,
	.unlocked_ioctl = gh_pfnmap_ioctl,
};

static struct miscdevice gh_pfnmap_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "gh-pfnmap-test",
	.fops = &gh_pfnmap_fops,
};

module_misc_device(gh_pfnmap_dev);
MODULE_DESCRIPTION("gpu-hostmem test: RAM mapped as TTM maps it (test bed only)");
MODULE_LICENSE("GPL");
